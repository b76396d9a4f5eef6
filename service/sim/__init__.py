"""The provider simulator: Trinetra, apiframe and Segmind as their docs describe them.

Mounted in-process by the embedded default for every provider without an API key, and run as its own
uvicorn server by the tests. It never needs an account and it counts every request to a job-status
endpoint, so tests can prove reelhook never polls.
"""

from service.sim.simulator import Scenario, Simulator, create_sim_app

__all__ = ["Scenario", "Simulator", "create_sim_app"]
