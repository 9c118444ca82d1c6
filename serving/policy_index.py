"""`/v1/policies`: the answer for a policy no loop of the run serves.

Each RL loop's app answers under /v1/policies/<its policy id> (serving/policy_server.py);
Serve routes a request to the longest prefix that matches, so a request for any other
policy id lands here and gets a 404 that names the policies the run serves.
"""

# no `from __future__ import annotations`: FastAPI must see `Request` itself

from fastapi import FastAPI, HTTPException
from ray import serve

from serving.policy_server import ROUTE_PREFIX

APP_NAME = "policies"
# no docs routes: it answers only what no loop serves
api = FastAPI(title="Evolve policies", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="policy_index", ray_actor_options={"num_cpus": 0.01})
@serve.ingress(api)
class PolicyIndex:
    def __init__(self, served: list[str]):
        self.served = sorted(served)

    @api.post("/{policy_id}/act")
    def act(self, policy_id: str) -> None:
        raise HTTPException(404, detail=f"unknown policy {policy_id!r}; served: {self.served}")


def deploy_policy_index(served: list[str]) -> None:
    """The 404 answer under /v1/policies for a policy id that is not among `served`."""
    serve.run(PolicyIndex.bind(list(served)), name=APP_NAME, route_prefix=ROUTE_PREFIX,
              logging_config={"log_level": "WARNING"})


def undeploy_policy_index() -> None:
    serve.delete(APP_NAME)
