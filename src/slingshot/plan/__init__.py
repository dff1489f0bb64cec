"""Choose before you spend: model catalogue, hardware, and memory/time/cost estimates with advice.

`make_plan(recipe)` reads the model's config and the data (never the weights) and returns a `Plan`; see
planner.py for the order of work, estimate.py for the arithmetic, advice.py for what it recommends.
"""

from slingshot.plan.planner import Plan, make_plan

__all__ = ["Plan", "make_plan"]
