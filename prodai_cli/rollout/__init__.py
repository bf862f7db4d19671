"""``prodai rollout``: a canary that moves traffic step by step, judges live SLOs, and promotes or rolls back.

The plan and its progress live in ``.prodai/rollout.json`` (written atomically at every change), so a
rollout whose process died can be resumed (``--resume``) or undone (``--abort``), and ``prodai rollout
status`` always says where the weights stand.
"""

from prodai_cli.rollout.engine import (
    RolloutPlan,
    RolloutState,
    abort_rollout,
    load_state,
    parse_steps,
    plan_rollout,
    run_rollout,
)

__all__ = [
    "RolloutPlan",
    "RolloutState",
    "abort_rollout",
    "load_state",
    "parse_steps",
    "plan_rollout",
    "run_rollout",
]
