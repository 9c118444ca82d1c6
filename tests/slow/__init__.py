"""The slow tier (`make test-slow`, `pytest -m slow`): learning runs that prove the loops learn.

Unit and integration tests check the wiring with budgets too short to learn anything; this tier
runs the real `evolve` CLI on the shipped presets, for minutes each, and asserts on what the run
wrote to summary.json: CartPole and Taxi are solved, the sentiment classifier from a random init
gains held-out accuracy behind the publish gate, and masked-LM pretraining beats the accuracy a
model that ignores context can reach.  Each test prints its figure (see it with `pytest -s` or
`-rA`) and puts it in its assertion message.
"""
