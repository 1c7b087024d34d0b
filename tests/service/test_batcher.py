import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.batcher import DynamicBatcher
from zdc_sim import features, reference
from zdc_sim.simulator import Simulator

from .conftest import PARTICLE, infer_body


def _small_simulator(path):
    return Simulator.load(path, device="cpu", batch_size=8)


def test_batching_coalesces_splits_and_keeps_seeded_outputs(tiny_checkpoint):
    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(24, np.random.default_rng(1))[0])
    slices = [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12), slice(12, 24)]  # the last is split: 8 + 4
    alone = [sim.simulate(feats[s], seed=i).channels for i, s in enumerate(slices)]
    batches = []

    async def run(enabled):
        batcher = DynamicBatcher(sim, max_batch_size=8, max_queue_delay_ms=50, max_queue_particles=100,
                                 enabled=enabled, observe=lambda batch, **kw: batches.append(batch))
        batcher.start()
        results = await asyncio.gather(*(batcher.simulate(feats[s], sim.draws(s.stop - s.start, i))
                                         for i, s in enumerate(slices)))
        await batcher.stop()
        return results

    results = asyncio.run(run(True))
    assert sum(batches) == 24 and max(batches) <= 8 and len(batches) < 6  # coalesced, never above the max
    for got, want in zip(results, alone):
        np.testing.assert_allclose(got.channels, want, rtol=1e-5)
    assert results[-1].channels.shape == (12, 5)
    batches.clear()
    asyncio.run(run(False))
    assert batches == [3, 3, 3, 3, 8, 4]


def test_latents_drawn_in_the_worker_are_the_seeds_rows(tiny_checkpoint):
    """A request that gives its seed and first row, not draws, gets those rows' draws
    (drawn in the worker thread), split into pieces or not; without a seed, fresh ones."""
    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(20, np.random.default_rng(3))[0])

    async def run():
        batcher = DynamicBatcher(sim, max_batch_size=8, max_queue_delay_ms=5, max_queue_particles=100)
        batcher.start()
        results = await asyncio.gather(batcher.simulate(feats, seed=7, row_start=5),
                                       batcher.simulate(feats[:3]), batcher.simulate(feats[:3]))
        await batcher.stop()
        return results

    seeded, fresh, again = asyncio.run(run())
    np.testing.assert_array_equal(seeded.counts, sim.simulate_draws(feats, sim.draws(20, 7, start=5)).counts)
    assert not np.array_equal(fresh.counts, again.counts)


def test_the_queue_delay_is_waited_only_while_requests_keep_company(tiny_checkpoint):
    """A lone request goes at once; once a batch has coalesced several, the next waits up to the
    queue delay (300 ms here) for company. Requests 50 ms apart show which happened."""
    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(1, np.random.default_rng(4))[0])
    batches = []

    async def run():
        batcher = DynamicBatcher(sim, max_batch_size=8, max_queue_delay_ms=300, max_queue_particles=100,
                                 observe=lambda batch, **kw: batches.append(batch))
        batcher.start()

        async def later(delay):
            await asyncio.sleep(delay)
            return await batcher.simulate(feats, seed=1)

        await asyncio.gather(later(0), later(0.05))  # alone: no wait, so the second misses the first
        lone = list(batches)
        await asyncio.gather(*(later(0) for _ in range(3)))  # queued together: one batch of 3
        batches.clear()
        await asyncio.gather(later(0), later(0.05))  # after company: the first waits for the second
        await batcher.stop()
        return lone

    assert asyncio.run(run()) == [1, 1] and batches == [2]


def test_stopping_the_batcher_finishes_what_is_queued(tiny_checkpoint):
    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(40, np.random.default_rng(2))[0])

    async def run():
        batcher = DynamicBatcher(sim, max_batch_size=4, max_queue_delay_ms=20, max_queue_particles=100)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.simulate(feats[i : i + 10], sim.draws(10, i))) for i in range(0, 40, 10)]
        await asyncio.sleep(0)  # the requests are queued, none is done
        await batcher.stop()
        return [t.result() for t in tasks]

    assert [r.channels.shape for r in asyncio.run(run())] == [(10, 5)] * 4


def test_full_queue_answers_503_with_retry_after(tiny_checkpoint, tmp_path):
    from tests.test_export import write_particles

    write_particles(tmp_path / "in.root", n=11)
    settings = Settings(checkpoint=str(tiny_checkpoint), device="cpu", max_queue_particles=10)
    with TestClient(create_app(settings), base_url="http://localhost") as c:
        body, headers = infer_body(n=11)
        answers = [c.post("/v1/simulate", json={"particles": [PARTICLE] * 11}),
                   c.post("/v2/models/zdc-zn/infer", content=body, headers=headers),
                   c.post("/v1/export", content=(tmp_path / "in.root").read_bytes())]
        for r in answers:
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.url
            assert "Exceeds maximum queue size" in r.json()["error"]




def test_the_queue_is_bounded_in_time(tiny_checkpoint):
    """calibrate() turns max_queue_seconds into particles at the measured rate (clamped between one
    batch and max_queue_particles); a request is also refused while the oldest queued piece waited
    longer than the bound, with the expected wait as Retry-After."""
    from service.batcher import QueueFull

    sim = _small_simulator(tiny_checkpoint)
    batcher = DynamicBatcher(sim, max_batch_size=8, max_queue_delay_ms=0, max_queue_particles=10**9,
                             max_queue_seconds=0.5)
    batcher.calibrate()
    assert batcher.rate > 0 and batcher.capacity == max(8, int(batcher.rate * 0.5))
    batcher.max_particles = 20
    batcher.calibrate()
    assert batcher.capacity == 20
    batcher.pending = 15
    with pytest.raises(QueueFull, match=r"15 particles queued, request of 6, limit 20 \(0.5 s of work at .* particles/s\)"):
        batcher._admit(6)
    batcher._admit(5)
    batcher.lag = 0.6
    with pytest.raises(QueueFull, match="queued requests wait 0.6 s, limit 0.5 s") as refused:
        batcher._admit(1)
    assert refused.value.retry_after_s >= 1
    batcher.pending = 0  # an empty queue admits whatever the last batch waited
    batcher._admit(1)


def test_requests_of_gone_clients_or_past_their_deadline_are_dropped_unsimulated(tiny_checkpoint):
    from service.batcher import DeadlineExceeded

    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(4, np.random.default_rng(1))[0])
    simulated, dropped = [], []

    async def run():
        batcher = DynamicBatcher(sim, max_batch_size=8, max_queue_delay_ms=0, max_queue_particles=100,
                                 observe=lambda batch, **kw: simulated.append(batch),
                                 observe_dropped=lambda reason, particles: dropped.append((reason, particles)))
        gone = asyncio.ensure_future(batcher.simulate(feats[:3], seed=1))
        late = asyncio.ensure_future(batcher.simulate(feats[:2], seed=2, timeout_s=0.01))
        kept = asyncio.ensure_future(batcher.simulate(feats[:1], seed=3))
        await asyncio.sleep(0.05)  # queued while no worker runs: the deadline passes
        gone.cancel()
        await asyncio.sleep(0)
        batcher.start()
        result = await kept
        with pytest.raises(DeadlineExceeded, match="past its deadline; not simulated"):
            await late
        await batcher.stop()
        return result, batcher.pending

    result, pending = asyncio.run(run())
    assert result.channels.shape == (1, 5) and pending == 0
    assert simulated == [1] and sorted(dropped) == [("cancelled", 3), ("deadline", 2)]


def test_a_client_that_disconnects_while_queued_is_dropped(tiny_checkpoint):
    from service.batcher import ClientGone
    from service.state import Served, ServiceState

    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(2, np.random.default_rng(1))[0])
    dropped = []

    async def run():
        state = ServiceState(Settings(device="cpu"))
        batcher = DynamicBatcher(sim, 8, 0, 100, observe_dropped=lambda reason, n: dropped.append((reason, n)))
        state.served["zn"] = Served("zn", "zdc-zn", sim, batcher)
        state.ready = True

        async def disconnect():
            await asyncio.sleep(0.02)
            return {"type": "http.disconnect"}

        with pytest.raises(ClientGone):
            await state.simulate(feats, seed=1, disconnected=disconnect)
        state.batcher.start()  # the worker finds the piece abandoned
        assert (await state.simulate(feats[:1], seed=1)).channels.shape == (1, 5)
        await state.batcher.stop()

    asyncio.run(run())
    assert dropped == [("cancelled", 2)]
