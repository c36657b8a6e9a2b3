"""`python -m pibloom.client ...` runs `pibloom batch ...` (handy where the console script is absent)."""

from .cli import batch_command

if __name__ == "__main__":
    batch_command(prog_name="pibloom batch")
