"""What one iteration costs on G GPUs, synchronous and one-step-off asynchronous: a discrete-event model.

Pure Python, standard library only, deterministic for a seed; runs in seconds. For G = 8, 16, ..., 4096 it prints
GPU utilisation and iterations per hour of the loop (generate → judge → pairs → train → publish the policy) under
two schedules, the resource that binds, the knee (where the controller, the database or publication, not the
GPUs, sets the pace) and what one iteration writes to the database, per table.

    python benchmarks/scale_sim.py                 # the code as it is (the first table of docs/scaling.md)
    python benchmarks/scale_sim.py --planned       # with the planned fixes (the second table)

Schedules. sync: every GPU does each stage in turn (colocated; a stage starts when the last shard of the one
before is done), then the new policy is published before the next iteration generates. async (staleness bound 1,
as verl's one-step-off trainer): the GPUs are split into a generation fleet and a training gang, sized to the
work; generation of iteration k+1 runs, with the policy k generated with, while k trains, and generation of k+2
waits for k's policy to be published. A discrete-event loop over 8 iterations gives the steady period.

Model (each line an assumption of the model; override any parameter with its --option):
- Weak scaling: prompts per iteration = prompts_per_gpu × G; each prompt gets K answers (`pairs.source: sampled`),
  each answer is judged once (a pointwise LLM judge: prompt, answer and a template of judge_extra_tokens), one pair
  per prompt is trained (DPO: chosen and rejected). Answer lengths: lognormal (sigma length_sigma) with mean
  mean_out_tokens, cut at max_out_tokens, drawn with the seed.
- Generation: a replica (gpus_per_replica GPUs) decodes in steps of fixed time max_seqs / (gen_tps × GPUs): the
  decode step is memory-bound, so a step costs the same with fewer sequences in it, and idle slots are lost
  throughput (the long tail). As built, a shard (shard_size prompts × K answers) is sent to server k mod n and is
  done when its slowest answer is; workers_per_replica workers take shards one at a time. Planned: sequences
  stream into free slots (no shard barrier).
- Judging is prefill (compute-bound): judge_tps = peak × MFU / (2 × params). Training: train_tps = peak × MFU /
  (train_flops_factor × params); the 6N of a training token covers LoRA's forward and input-gradient passes (4N)
  plus the reference pass (2N); data-parallel scaling is taken as perfect beyond the MFU. Each iteration's trainer
  is a new process (train_startup_s: start, load the weights). The pairs stage is one CPU shard.
- Publication, as built: the adapter is loaded by each vLLM server in turn (`vllm_backend.publish` loops over the
  servers; adapter_load_s each). Planned: all at once, limited by the shared filesystem (fs_gb_s); with --publish
  full, the whole weights go by NCCL broadcast.
- Control plane: per shard the controller sends a message (msg_ms) and commits its sent mark (commit_ms), one
  after another; it polls every poll_s and a stage ends on a poll (half a poll on average); each poll reads every
  claim row of the stage (ctrl_row_us per row). Workers claim (a commit), beat every shard_lease_s / 4, commit
  their outputs, release; as built a claim reads every done shard of the stage (`shards.claim` calls
  `done_shards`): S²/2 rows read per stage. Planned: the controller sends in one commit per poll and counts done
  shards, a claim reads one row.
- Database: one PostgreSQL primary. Rows and bytes each iteration writes are counted from the tables in
  loop/store/models.py (`--db-detail-g` prints them per table): small rows count small_row_bytes, text counts
  chars_per_token bytes per token. A stage's database time is max(rows / db_rows_s, bytes / db_mb_s) +
  transactions / db_txn_s + rows read / db_read_rows_s; the stage lasts as long as the slowest of its GPU work,
  its database time and its controller time. In async the two sides share the database and the controller.
- The knee: the first G at which a resource other than the GPUs has the largest share of the critical path; and,
  one by one, the first G at which the controller's busy time, the database's or the publication reaches the GPU
  time of an iteration (it saturates). Past 1024 servers, 1024 are simulated, each with the load it would have.

Defaults, and where they come from:
- gen_tps 5777 tokens/s: Llama 3.1 8B (FP8) with vLLM 0.10.0 on one H100, MLPerf Inference v5.1 Offline (Red Hat,
  "Efficient and reproducible LLM inference: Red Hat MLPerf Inference v5.1 results", redhat.com blog).
- peak 989 TFLOP/s: H100 SXM dense BF16 (NVIDIA H100 datasheet; 1979 with sparsity). mfu 0.40: Llama 3 training
  reached 38-43 % BF16 MFU on 8-16 thousand H100s ("The Llama 3 Herd of Models", arXiv:2407.21783, Table 4).
  params 8.03e9 and the layer shapes of the adapter (hidden 4096, MLP 14336, KV 1024, 32 layers): Llama 3.1 8B's
  config. The adapter: cai's default LoRA (r 16, all linear layers), bf16.
- bcast_gb_s 62 and bcast_hop_s 0.42: checkpoint-engine (MoonshotAI/checkpoint-engine README) updates Kimi-K2
  (1 trillion parameters, FP8: ~1e12 bytes) in 16.04 s on 256 H20 GPUs and 14.36 s on 16: ~62 GB/s, +0.42 s per
  doubling of the fleet.
- The generation share this model gives at small G (printed) is to be read against the 80 % of OpenRLHF's README
  ("80% of the time is spent on the sample generation stage") and the ~70 % of verl's one-step-off recipe (DAPO
  32B rollout).
- msg_ms 0.83: a no-op message through local Redis, measured by benchmarks/queue_overhead.py on this project's
  2-core CPU machine (README). commit_ms 1.02: 1M rows inserted one at a time took 16.95 min (PostgreSQL 18.4,
  m7i.2xlarge; jadhav.dev, "1M Rows Into Postgres in 1.29 Seconds", its slowest path). db_rows_s 775000 and
  db_mb_s 194: the same post's fastest path, 1M rows (~250 MB) by COPY in 1.29 s: a generous ceiling for ORM
  inserts. db_txn_s 40000: pgbench TPC-B read-write on a 32-vCPU NVMe server, the low end of 40-60 thousand
  (kb.ekarisky.com, PostgreSQL benchmarks). chars_per_token 4: OpenAI's rule of thumb for English text.
- Assumed, not measured (measure them on the target cluster and pass them in): adapter_load_s, fs_gb_s,
  train_startup_s, db_read_rows_s, ctrl_row_us, pairs_us_per_prompt, small_row_bytes, max_seqs (vLLM's
  max_num_seqs), the length distribution and the workload sizes. In flight per server as built: workers ×
  min(generation.server.concurrency, a shard's answers); the defaults take a concurrency of 64 (cai's default,
  16, with compose's two workers keeps 32 in flight).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import math
import random
import statistics
from dataclasses import dataclass, fields

GS = [8 * 2**i for i in range(10)]


@dataclass(frozen=True)
class Params:
    prompts_per_gpu: int = 64
    answers_per_prompt: int = 4
    prompt_tokens: int = 256
    mean_out_tokens: int = 512
    max_out_tokens: int = 1024
    length_sigma: float = 0.6
    judge_extra_tokens: int = 150
    reward_components: int = 3
    chars_per_token: float = 4.0
    small_row_bytes: int = 100
    params: float = 8.03e9
    peak_tflops: float = 989.0
    mfu: float = 0.40
    gen_tps: float = 5777.0
    max_seqs: int = 256
    gpus_per_replica: int = 1
    train_flops_factor: float = 6.0
    train_startup_s: float = 30.0
    publish: str = "adapter"
    lora_rank: int = 16
    adapter_load_s: float = 0.5
    fs_gb_s: float = 10.0
    bcast_gb_s: float = 62.0
    bcast_hop_s: float = 0.42
    shard_size: int = 16
    workers_per_replica: int = 4
    shard_lease_s: float = 60.0
    msg_ms: float = 0.83
    commit_ms: float = 1.02
    poll_s: float = 1.0
    ctrl_row_us: float = 20.0
    pairs_us_per_prompt: float = 100.0
    db_rows_s: float = 775_000.0
    db_mb_s: float = 194.0
    db_txn_s: float = 40_000.0
    db_read_rows_s: float = 2_000_000.0
    planned: bool = False
    seed: int = 0
    db_detail_g: int = 1024

    @property
    def judge_tps(self) -> float:
        return self.peak_tflops * 1e12 * self.mfu / (2 * self.params)

    @property
    def train_tps(self) -> float:
        return self.peak_tflops * 1e12 * self.mfu / (self.train_flops_factor * self.params)

    @property
    def adapter_bytes(self) -> float:
        per_layer = (4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3  # q, o; k, v; gate, up, down
        return self.lora_rank * per_layer * 32 * 2


def length_table(p: Params, size: int = 4096) -> tuple[int, ...]:
    """Quantiles of the answer length: lognormal with mean mean_out_tokens, cut at max_out_tokens."""
    mu = math.log(p.mean_out_tokens) - p.length_sigma**2 / 2
    normal = statistics.NormalDist(mu, p.length_sigma)
    return tuple(min(p.max_out_tokens, max(1, round(math.exp(normal.inv_cdf((i + 0.5) / size))))) for i in range(size))


def replica_makespan(p: Params, seqs: int, lengths: tuple[int, ...], rng: random.Random) -> tuple[float, int]:
    """(decode steps until the replica's last answer is done, tokens it generated) for `seqs` answers."""
    draw = [lengths[int(rng.random() * len(lengths))] for _ in range(seqs)]
    if p.planned:  # continuous batching: each answer takes the next free slot
        if seqs <= p.max_seqs:
            return max(draw, default=0), sum(draw)
        slots = [0] * p.max_seqs
        for n in draw:
            heapq.heapreplace(slots, slots[0] + n)
        return max(slots), sum(draw)
    per_shard = p.shard_size * p.answers_per_prompt
    shards = [max(draw[i:i + per_shard]) for i in range(0, seqs, per_shard)]
    lanes = [0] * min(p.workers_per_replica, max(1, len(shards)))
    for steps in shards:  # a worker takes the next shard once its whole shard is done
        heapq.heapreplace(lanes, lanes[0] + steps)
    return max(lanes), sum(draw)


def generation(p: Params, gpus: int, answers: int, lengths: tuple[int, ...]) -> tuple[float, int]:
    """(seconds until the fleet's last answer, tokens generated); past 1024 servers, 1024 are simulated."""
    replicas = max(1, gpus // p.gpus_per_replica)
    shards = math.ceil(answers / (p.shard_size * p.answers_per_prompt))
    sampled = min(replicas, 1024)
    steps, tokens = _fleet(p, sampled, max(1, round(shards * sampled / replicas)), lengths)
    return steps * p.max_seqs / (p.gen_tps * p.gpus_per_replica), round(tokens * replicas / sampled)


@functools.cache
def _fleet(p: Params, replicas: int, shards: int, lengths: tuple[int, ...]) -> tuple[int, int]:
    rng = random.Random(f"{p.seed}:{replicas}:{shards}")
    per_shard = p.shard_size * p.answers_per_prompt
    worst, tokens = 0, 0
    for r in range(replicas):
        steps, made = replica_makespan(p, len(range(r, shards, replicas)) * per_shard, lengths, rng)
        worst, tokens = max(worst, steps), tokens + made
    return worst, tokens


def db_rows(p: Params, prompts: int) -> dict[str, tuple[float, float]]:
    """Per table: (rows written, bytes) by one iteration of `prompts` prompts (loop/store/models.py)."""
    k, c, small = p.answers_per_prompt, p.reward_components, p.small_row_bytes
    answer = p.mean_out_tokens * p.chars_per_token
    shards = 2 * math.ceil(prompts / p.shard_size) + 2  # generate, judge, then pairs and train: one each
    return {
        "samples (insert: prompt)": (prompts, prompts * (small + p.prompt_tokens * p.chars_per_token)),
        "samples (update: response)": (prompts, prompts * (small + answer)),
        "sampled_answers (insert: text)": (prompts * k, prompts * k * (small + answer)),
        "sampled_answers (update: reward)": (prompts * k, prompts * k * small),
        "reward_scores": (prompts * k * c, prompts * k * c * small),
        "pairs (chosen, rejected)": (prompts, prompts * (small + 2 * answer)),
        "shard_claims + stage_runs": (2 * shards, 2 * shards * small),
    }


def binder(parts: dict[str, float]) -> str:
    return max(parts, key=parts.get)


def stage(p: Params, compute: float, shards: int, rows: float, nbytes: float, lanes: int) -> dict:
    """One stage: as long as the slowest of its GPU (or CPU) work, the controller's path to its last shard and
    its database time, then half a poll until the controller sees it done."""
    sends = shards * p.msg_ms / 1e3 + (p.commit_ms / 1e3 if p.planned else shards * p.commit_ms / 1e3)
    per_poll = (1 if p.planned else shards) * p.ctrl_row_us / 1e6  # the claim rows read by each poll
    reads = shards if p.planned else shards * (shards + 1) / 2  # a claim reads one row, or every done shard
    beats = lanes * compute / (p.shard_lease_s / 4) if shards > 1 else 0
    db = max(rows / p.db_rows_s, nbytes / (p.db_mb_s * 1e6)) + (4 * shards + beats) / p.db_txn_s
    parts = {"gpu": compute, "controller": sends, "database": db + reads / p.db_read_rows_s}
    last = sends + compute / math.ceil(shards / max(1, lanes))  # the last shard is sent, then runs
    time = max(compute, last, parts["database"]) + max(p.poll_s, per_poll) / 2
    return {"time": time, "binder": binder(parts), "db": parts["database"], "gpu": compute,
            "ctrl": sends + time * min(1.0, per_poll / p.poll_s)}


def publication(p: Params, replicas: int, gpus: int) -> float:
    if p.publish == "full":
        return 2 * p.params / (p.bcast_gb_s * 1e9) + p.bcast_hop_s * max(0.0, math.log2(max(1, gpus) / 16))
    if p.planned:
        return p.adapter_load_s + replicas * p.adapter_bytes / (p.fs_gb_s * 1e9)
    return replicas * p.adapter_load_s


def sides(p: Params, g_gen: int, g_train: int, prompts: int, lengths: tuple[int, ...]) -> dict:
    """The generation side (generate, judge, pairs) on g_gen GPUs and the training side on g_train."""
    answers = prompts * p.answers_per_prompt
    gen_s, tokens = generation(p, g_gen, answers, lengths)
    judge_tokens = answers * (p.prompt_tokens + tokens / answers + p.judge_extra_tokens)
    train_tokens = prompts * 2 * (p.prompt_tokens + tokens / answers)
    shards = math.ceil(prompts / p.shard_size)
    lanes = max(1, g_gen // p.gpus_per_replica) * p.workers_per_replica
    rows = db_rows(p, prompts)
    gen_rows = [rows[t] for t in rows if t.startswith(("samples", "sampled_answers (insert"))]
    stages = [
        stage(p, gen_s, shards, sum(r for r, _ in gen_rows), sum(b for _, b in gen_rows), lanes),
        stage(p, judge_tokens / (p.judge_tps * g_gen), shards, *map(sum, zip(
            rows["sampled_answers (update: reward)"], rows["reward_scores"], strict=True)), lanes),
        stage(p, prompts * p.pairs_us_per_prompt / 1e6, 1, *rows["pairs (chosen, rejected)"], 1),
        stage(p, train_tokens / (p.train_tps * g_train), 1, 0, 0, 1),
    ]
    stages[2]["binder"] = "pairs (one CPU shard)" if stages[2]["binder"] == "gpu" else stages[2]["binder"]
    pub = publication(p, max(1, g_gen // p.gpus_per_replica), g_gen)
    gen_parts = {n: sum(s["time"] for s in stages[:3] if s["binder"] == n) for n in {s["binder"] for s in stages[:3]}}
    train_parts = {stages[3]["binder"]: stages[3]["time"], "trainer start": p.train_startup_s, "publication": pub}
    work = tokens / p.gen_tps + judge_tokens / p.judge_tps + train_tokens / p.train_tps
    return {"gen": sum(gen_parts.values()), "train": sum(train_parts.values()), "gen_parts": gen_parts,
            "train_parts": train_parts, "db": sum(s["db"] for s in stages), "ctrl": sum(s["ctrl"] for s in stages),
            "work": work, "gen_s": gen_s, "train_s": train_tokens / (p.train_tps * g_train),
            "gen_work": tokens / p.gen_tps + judge_tokens / p.judge_tps, "train_work": train_tokens / p.train_tps,
            "decode_work": tokens / p.gen_tps, "gpu_gen": stages[0]["gpu"] + stages[1]["gpu"],
            "gpu_train": stages[3]["gpu"]}


def pipeline(gen_s: float, train_s: float, staleness: int, iterations: int = 8) -> float:
    """Steady period of the generate → train chain: generation of k waits for the policy of k - 1 - staleness."""
    gen_end: list[float] = []
    train_end: list[float] = []
    for k in range(iterations):
        start = max(gen_end[-1] if gen_end else 0.0, train_end[k - 1 - staleness] if k > staleness else 0.0)
        gen_end.append(start + gen_s)
        train_end.append(max(gen_end[k], train_end[-1] if train_end else 0.0) + train_s)
    half = iterations // 2
    return (train_end[-1] - train_end[half]) / (iterations - 1 - half)


def split(p: Params, g: int, ref: dict) -> int:
    """GPUs for generation in async: balance a / x + a0 = b / (g - x) + b0(x) by bisection: a and b are the two
    sides' GPU-seconds (generation with the tail the sync run shows), a0 and b0 their fixed times (b0: trainer
    start and publication to x GPUs)."""
    tail = max(1.0, ref["gen_s"] * g / max(1e-9, ref["decode_work"]))
    a, b = ref["decode_work"] * tail + ref["gen_work"] - ref["decode_work"], ref["train_work"]
    a0 = ref["gen"] - ref["gpu_gen"]
    lo, hi = 1.0, g - 1.0
    for _ in range(40):
        x = (lo + hi) / 2
        b0 = p.train_startup_s + publication(p, max(1, round(x) // p.gpus_per_replica), round(x))
        lo, hi = (x, hi) if a / x + a0 > b / (g - x) + b0 else (lo, x)
    step = p.gpus_per_replica
    return min(g - 1, max(step, round(lo / step) * step))


def iteration(p: Params, g: int, schedule: str, lengths: tuple[int, ...]) -> dict:
    """One G, one schedule: period, utilisation, the binding resource, and each resource's time beside the
    GPUs' (`alone`: the controller's and the database's busy time and the publication, against the GPU time)."""
    prompts = p.prompts_per_gpu * g
    s = sides(p, g, g, prompts, lengths)
    if schedule == "sync":
        period = pipeline(s["gen"], s["train"], 0)
        parts = dict(s["gen_parts"])
        for name, t in s["train_parts"].items():
            parts[name] = parts.get(name, 0.0) + t
        name, gpu, g_gen = binder(parts), s["gpu_gen"] + s["gpu_train"], g
    else:
        g_gen = split(p, g, s)
        s = sides(p, g_gen, g - g_gen, prompts, lengths)
        period = pipeline(s["gen"], s["train"], 1)
        shared = {"database": s["db"], "controller": s["ctrl"]}
        if max(shared.values()) > period:
            period, name = max(shared.values()), binder(shared)
        else:
            name = binder(s["gen_parts"] if s["gen"] >= s["train"] else s["train_parts"])
        gpu = max(s["gpu_gen"], s["gpu_train"])
    alone = {"controller": s["ctrl"], "database": s["db"], "publication": s["train_parts"]["publication"]}
    return {"period": period, "util": s["work"] / (g * period), "binder": name, "split": (g_gen, g - g_gen),
            "share": s["gen_s"] / (s["gen_s"] + s["train_s"]), "alone": alone, "gpu": gpu}


def knees(p: Params, lengths: tuple[int, ...], table: dict) -> dict[str, tuple[int | None, str, dict]]:
    """Per schedule: the first G at which the GPUs stop setting the pace (and what does), and for the controller,
    the database and publication the first G at which its time reaches the GPUs' (searched up to G = 2**20)."""
    found = {}
    for schedule in ("sync", "async"):
        first: int | None = None
        what = ""
        saturated: dict[str, int | None] = {"controller": None, "database": None, "publication": None}
        g = GS[0]
        while g <= 2**20 and (first is None or None in saturated.values()):
            row = table[(schedule, g)] if (schedule, g) in table else iteration(p, g, schedule, lengths)
            if row["binder"] != "gpu" and first is None:
                first, what = g, row["binder"]
            for name, t in row["alone"].items():
                if saturated[name] is None and t >= row["gpu"]:
                    saturated[name] = g
            g *= 2
        found[schedule] = (first, what, saturated)
    return found


def db_detail(p: Params, lengths: tuple[int, ...]) -> list[str]:
    g = p.db_detail_g
    prompts = p.prompts_per_gpu * g
    rows = db_rows(p, prompts)
    period = iteration(p, g, "sync", lengths)["period"]
    out = [f"\nDatabase writes of one iteration at G = {g} ({prompts} prompts, {p.answers_per_prompt} answers "
           f"each, {p.reward_components} reward components per answer):\n",
           "| table | rows per prompt | rows per iteration | MB per iteration |", "|---|---|---|---|"]
    for table, (n, nbytes) in rows.items():
        out.append(f"| {table} | {n / prompts:.2f} | {n:,.0f} | {nbytes / 1e6:,.1f} |")
    total_rows, total_bytes = (sum(v[i] for v in rows.values()) for i in (0, 1))
    out.append(f"| total | {total_rows / prompts:.2f} | {total_rows:,.0f} | {total_bytes / 1e6:,.1f} |")
    shards = math.ceil(prompts / p.shard_size)
    out.append(f"\nControl rows: {8 * shards + 8:,} small transactions (claim, outputs, release, sent mark per "
               f"shard of generate and judge) plus a heartbeat per shard every {p.shard_lease_s / 4:.0f} s; as built "
               f"the claims also read {shards * (shards + 1):,} done-shard rows (S(S+1)/2 per stage, S={shards}).")
    out.append(f"\nOver the synchronous iteration's {period:.0f} s: {total_rows / period:,.0f} rows/s and "
               f"{total_bytes / 1e6 / period:.1f} MB/s, against a ceiling of {p.db_rows_s:,.0f} rows/s and "
               f"{p.db_mb_s:.0f} MB/s ({total_rows / period / p.db_rows_s:.1%} and "
               f"{total_bytes / 1e6 / period / p.db_mb_s:.1%}).")
    return out


def report(p: Params) -> list[str]:
    lengths = length_table(p)
    table = {(s, g): iteration(p, g, s, lengths) for g in GS for s in ("sync", "async")}
    mean = statistics.fmean(lengths)
    out = [f"design: {'planned' if p.planned else 'as built'}, publication: {p.publish}, {p.prompts_per_gpu} prompts "
           f"per GPU x {p.answers_per_prompt} answers, mean answer {mean:.0f} tokens (cut at {p.max_out_tokens}), "
           f"seed {p.seed}\n",
           "| G | sync util | sync it/h | sync bottleneck | async util | async it/h | async gen/train GPUs "
           "| async bottleneck |", "|---|---|---|---|---|---|---|---|"]
    for g in GS:
        sy, asy = table[("sync", g)], table[("async", g)]
        out.append(f"| {g} | {sy['util']:.2f} | {3600 / sy['period']:.1f} | {sy['binder']} | {asy['util']:.2f} | "
                   f"{3600 / asy['period']:.1f} | {asy['split'][0]}/{asy['split'][1]} | {asy['binder']} |")
    for schedule, (first, what, saturated) in knees(p, lengths, table).items():
        order = ", ".join(f"{k} at G={v}" for k, v in sorted(saturated.items(), key=lambda kv: kv[1] or 2**21)
                          if v is not None) or "none"
        out.append(f"\nknee ({schedule}): the GPUs stop setting the pace at G={first or '> 2**20'}"
                   f"{f' ({what})' if what else ''}; the time of each of controller, database, publication reaches "
                   f"the GPUs' at: {order} (searched to G=2**20)")
    small = table[("sync", GS[0])]
    out.append(f"\ngeneration share of generate + train time (sync, G={GS[0]}): {small['share']:.2f} "
               f"(OpenRLHF reports 0.80, verl's one-step-off recipe ~0.70)")
    return out + db_detail(p, lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(Params):
        flag, kind = f"--{f.name.replace('_', '-')}", type(f.default)
        extra = {"action": "store_true"} if kind is bool else {"type": kind, "default": f.default}
        if f.name == "publish":
            extra["choices"] = ("adapter", "full")
        parser.add_argument(flag, help=f"default {f.default}", **extra)
    p = Params(**vars(parser.parse_args()))
    print("\n".join(report(p)))


if __name__ == "__main__":
    main()
