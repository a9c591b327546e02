r"""The curate config (its defaults live in the library: `diva_jax/app/curate_config.py`, so
the installed `diva-curate` command has them too).

  python -m experiments.curate --workdir=/tmp/diva/curate --config.source=/path/to/photos
  diva-curate --workdir=/tmp/diva/curate --config.source=/path/to/photos
"""

from diva_jax.app.curate_config import VARIANTS  # noqa: F401
from diva_jax.app.curate_config import get_config  # noqa: F401
