"""Offline evaluation of routers on labelled data: outcomes, categories, k-fold."""
