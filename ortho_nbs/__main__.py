__all__ = []

# %% ../nbs/05_runner.ipynb #3a517271
import sys
from .runner import main
if __name__ == "__main__" and "ipykernel" not in sys.modules: raise SystemExit(main())

# %% ../nbs/05_runner.ipynb #3a5e34fe
import sys
from .runner import main
if __name__ == "__main__" and "ipykernel" not in sys.modules: raise SystemExit(main())

# %% ../nbs/05_runner.ipynb #8eb2e34d
import sys
from .runner import main
if __name__ == "__main__" and "ipykernel" not in sys.modules: raise SystemExit(main())

# %% ../nbs/05_runner.ipynb #a6ecd480
import sys
from .runner import main
if __name__ == "__main__" and "ipykernel" not in sys.modules: raise SystemExit(main())