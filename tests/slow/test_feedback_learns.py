"""The live feedback loop learns from its clients: from a random init, held-out accuracy rises by
at least 0.10 over version 1, behind the publish gate.

`evolve run configs/sentiment.yaml` as shipped (a 3 x 192 classifier, 128 tokens, the real
McNemar gate on 1,000 held-out reviews, traffic actors sending 70% labels / 30% rewards), with
one change: `loops.sentiment.model.encoder_registry=null` forces the random init, and no encoder is
pretrained beside it (`loops.sentiment_mlm=null`), so the gain is the feedback loop's own and not
an encoder's (tests/integration/test_rebase_run.py covers re-basing).  The figure is the gate's: held-out accuracy of the version
live at the end minus that of version 1 (both scored by the gate on the same fixed rows that
are never sent as traffic), so only promoted versions count.

Budget: 900 s.  On 2 cores the run takes ~45 s to come up; then the replica serves a few dozen
predictions a second, the learner (one core) runs ~1-3 updates/s of 32 rows (16 fresh, 16
rehearsed), a candidate every 50 updates, each scored by the gate in seconds.  The held-out set
is balanced (520 neg / 480 pos), so version 1 sits near 0.5; the same architecture from a random
init reaches ~0.76 on 2,000 labeled reviews (benchmarks/README.md, pretrain_ablation.py), and
the loop sees several thousand distinct reviews in its first few hundred seconds.
`loops.sentiment.stop_accuracy=0.75` ends the run once the live version reaches 0.75 (at least 0.2
over a version 1 near 0.5), so a healthy run finishes early and the budget is only the ceiling.
"""

import pytest

from tests.slow.helpers import evolve_run, figure, timeout_for

pytestmark = pytest.mark.slow

BUDGET_S = 900
MIN_GAIN = 0.10
STOP_ACCURACY = 0.75


@pytest.mark.timeout(timeout_for(BUDGET_S))
def test_sentiment_from_random_init_gains_heldout_accuracy(tmp_path):
    run = evolve_run("configs/sentiment.yaml", tmp_path / "run", BUDGET_S,
                     "loops.sentiment.model.encoder_registry=null", f"loops.sentiment.stop_accuracy={STOP_ACCURACY}",
                     "loops.sentiment_mlm=null", "loops.sentiment.model.encoder_loop=null")
    s = run.loop("sentiment")
    initial, final = s["initial_heldout_accuracy"], s["heldout_accuracy"]
    gain = final - initial if initial is not None and final is not None else None
    promotions = s["promotions"]
    line = figure("sentiment", heldout_gain=gain, initial_heldout_accuracy=initial, heldout_accuracy=final,
                  live_version=s["live_version"], promoted=s["promoted"], refused=s["refused"],
                  rollbacks=len(s["rollbacks"]), feedback_events=s["feedback_events"],
                  learner_updates=s["learner_updates"], reached_stop_accuracy_s=s["reached_stop_accuracy_s"],
                  stopped_by=run.summary["run"]["stopped_by"])
    assert s["origin"].get("encoder") == "random_init", f"not a random init: origin {s['origin']}; {line}"
    assert not run.events("sentiment", "no_encoder"), line  # none was asked for, so none was missing
    assert gain is not None and gain >= MIN_GAIN, (
        f"held-out accuracy rose by {gain} (< {MIN_GAIN}) over version 1 in {BUDGET_S} s: {line}\n"
        f"curve: {s['curve']}{run.tail()}")
    # the gain is a promoted version's: version 1 was the first decision, the live one a later promotion
    assert promotions[0]["decision"] == "initial" and promotions[0]["heldout_accuracy"] == initial, promotions[:2]
    live = [p for p in promotions if p["version"] == s["live_version"]]
    assert live and live[-1]["decision"] == "promote" and live[-1]["heldout_accuracy"] == final, (line, promotions)
