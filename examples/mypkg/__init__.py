"""An example of your own package plugged into fedattack by import path (see docs/recipes.md):
a strategy, a model and an attack. Run from `examples/` (this package's parent) with it on the
import path:

    PYTHONPATH=. fedattack run audit.attacks=[mypkg.attacks:mine] mine.iterations=5
"""
