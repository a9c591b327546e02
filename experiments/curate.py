r"""Find the label issues in your own dataset with the dataset derivative.

  python -m experiments.curate --workdir=/tmp/diva/curate --config.source=/path/to/photos

The same as the installed `diva-curate` command (`diva_jax.app.curate.main`); see
configs/curate.py for the options and diva_jax/app/curate.py for the outputs.
"""

from diva_jax.app import curate

if __name__ == "__main__":
  curate.main()
