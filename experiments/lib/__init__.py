"""What only the experiment runs share: sweeps over configs (`sweep`) and hyperparameter
grids (`hyper`). The pieces `curate` needs too live in the library, `diva_jax.app`."""

import os

import experiments

# The folder holding the `experiments` package (the repository root in a checkout): what a
# child process needs on its PYTHONPATH, and where `experiments/peers` lives.
ROOT = os.path.dirname(os.path.abspath(list(experiments.__path__)[0]))


def records_run(run):
  """For the flag-driven benchmarks (no config file): `run(workdir, **options)` also writes
  `config.json` (every option, defaults included) and `metrics.json` (what it returns) when it
  has finished (so bad options, refused by the run, leave nothing), atomically, like every
  config-driven binary."""
  import functools
  import inspect

  from diva_jax import io_utils
  from diva_jax.app import workdir as workdir_lib

  sig = inspect.signature(run)

  @functools.wraps(run)
  def wrapper(workdir, *args, **kwargs):
    bound = sig.bind(workdir, *args, **kwargs)
    bound.apply_defaults()
    options = {k: v for k, v in bound.arguments.items() if k != "workdir"}
    out = run(workdir, *args, **kwargs)
    os.makedirs(workdir, exist_ok=True)
    io_utils.atomic_write_json(os.path.join(workdir, "config.json"),
                               workdir_lib.to_json({k: (v if isinstance(
                                   v, (int, float, str, bool, list, tuple, dict, type(None)))
                                   else repr(v)) for k, v in options.items()}))
    io_utils.atomic_write_json(os.path.join(workdir, "metrics.json"), workdir_lib.to_json(out))
    return out

  return wrapper
