"""Mitogen's linear strategy, from the mitogen package pinned in .config/requirements.lock.

ansible.cfg (and .config/molecule/config.yml) name it: each host keeps one Python process
for the whole run, so a task costs a message instead of a new interpreter and a module
upload. A converged site.yml re-run takes about half as long.

Plays that run on the control node itself (`connection: local`) keep Ansible's own linear
strategy: under Mitogen, an async task of community.docker's modules never finishes (its
job file stays `finished: 0`), and Molecule's create and destroy playbooks are such plays.
They gain nothing from Mitogen anyway: there is no remote interpreter to keep.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import Base
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as MitogenLinear

__all__ = ["StrategyModule"]

LOCAL_CONNECTIONS = frozenset({"local", "ansible.builtin.local"})


class StrategyModule(MitogenLinear):
    """mitogen_linear, except for plays whose connection is local."""

    def run(self, iterator, play_context, result=0):
        # The play's own `connection:` keyword (play_context still holds the default here).
        if iterator._play.connection in LOCAL_CONNECTIONS:
            return Base.run(self, iterator, play_context)
        return super().run(iterator, play_context, result)
