"""Several experts per query: fan out, then synthesise, vote, take the first, or let a judge pick.

Strategies are plug-ins chosen per pipeline (`pipelines.<name>.aggregation` in experts.yaml);
see docs/aggregation.md.
"""

from coe.aggregation.combine import Aggregation, choose_aggregator
from coe.aggregation.extract import Extracted, extract_answer
from coe.aggregation.fanout import ExpertAnswer, fan_out, sum_usage
from coe.aggregation.judge import parse_verdict
from coe.aggregation.outcome import FanOut
from coe.aggregation.strategy import (
    Combining,
    Strategy,
    StrategyRegistry,
    pipeline_strategies,
)
from coe.aggregation.vote import Ballot, VoteResult, all_agree, majority_vote

__all__ = [
    "Aggregation",
    "Ballot",
    "Combining",
    "ExpertAnswer",
    "Extracted",
    "FanOut",
    "Strategy",
    "StrategyRegistry",
    "VoteResult",
    "all_agree",
    "choose_aggregator",
    "extract_answer",
    "fan_out",
    "majority_vote",
    "parse_verdict",
    "pipeline_strategies",
    "sum_usage",
]
