"""Mitogen's linear strategy, from the mitogen package pinned in .config/requirements.lock.

ansible.cfg names it: each host keeps one Python process for the whole run, so a task
costs a message instead of a new interpreter and a module upload. A converged site.yml
re-run takes about half as long.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
