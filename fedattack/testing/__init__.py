"""Support for tests and benchmarks of fedattack and of plug-ins written for it.

- `fedattack.testing.cases`: one simulated client update as the audit sees it
  (`observed_update`, `synthetic_update`) and quick scores (`psnr_ssim`);
- `fedattack.testing.cluster`: a Ray cluster of several nodes on this machine (`LocalCluster`);
- `fedattack.testing.flower`: a Flower App directory run in this process as `flwr run` runs it
  (`run_app`), and a private FLWR_HOME for `flwr run` itself (`FlowerHome`).

Nothing else in the package imports these modules.
"""
