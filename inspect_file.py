"""The inspector, run from this folder: `python inspect_file.py PATH [--model Multiclass] [--json]`.

The same tool as the `inspect-model` command that installing the project adds; its code is
in model_inspector/, one module per format. `python inspect_file.py --help` says what it does.
"""

from model_inspector.cli import main

if __name__ == "__main__":
    main()
