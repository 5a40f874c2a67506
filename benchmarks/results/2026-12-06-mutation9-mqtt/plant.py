"""Plant this folder's mutants.py one at a time and run their tests: fedge.tools.audit.mutation_plant
(its docstring says how; run from the repository root, e.g. `python FOLDER/plant.py before.json`)."""

import sys
from pathlib import Path

from fedge.tools.audit.mutation_plant import main

if __name__ == "__main__":
    main(Path(__file__).parent, sys.argv[1:])
