"""Engine lifecycle: the engine a process serves and the only ways it changes (reload,
rebuild), kept in step across replicas through the config stored per version. Above the
engine (it builds engines), below the fronts that ask for a reload."""
