"""LAMMPS front end: the compiled plugin (pair_style probe/mace, compute probe/reliability),
its on-demand build (`build.plugin_path`) and the engine-independent monitor."""
