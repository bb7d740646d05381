"""`python -m tunecraft` runs the CLI (torchrun uses this entry point too)."""

from tunecraft.cli import main

if __name__ == "__main__":
    main()
