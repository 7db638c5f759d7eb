"""The run-folder schema: every file a stage writes or reads, and what its checkpoints hold.

Stages talk only through these files, so each arrow of the pipeline can be re-run alone:

    search            config.yaml, run.json, space.yaml (the space searched, byte for byte),
                      alphas.jsonl (one row per step), checkpoint.pth, final_alphas.json, log.txt;
                      with search.runs > 1: config.yaml, run.json and one such folder per supernet
    derive            genotype.yaml (or the --out file): see osnas.models.genotype.Genotype
    retrain           config.yaml, run.json, genotype.yaml, train_log.jsonl (one row per epoch),
                      checkpoint.pth, log.txt
    eval-crossdomain  metrics.json, results.md, log.txt
    plot              plots/*.png|svg
"""

CONFIG = "config.yaml"  # the resolved configuration (osnas.config.Config)
RUN_JSON = "run.json"  # stage, sources, seed, ... (what `osnas plot` reads to know the folder)
CHECKPOINT = "checkpoint.pth"

# search
SPACE = "space.yaml"
ALPHA_HISTORY = "alphas.jsonl"  # row keys: step, epoch, tau, loss_w, loss_a, alphas, probs, entropy
FINAL_ALPHAS = "final_alphas.json"  # the argmax genotype at the end of the search (a Genotype dict)
SEARCH_RESUME_KEYS = ("model", "w_opt", "a_opt", "streams", "rng", "epoch", "step_in_epoch", "global_step")

# derive and retrain
GENOTYPE = "genotype.yaml"
TRAIN_LOG = "train_log.jsonl"  # row keys: epoch, lr, fixbase, acc, and one per loss term
RETRAIN_RESUME_KEYS = ("model", "optimizer", "rng", "epoch", "step_in_epoch")
# what a retrain checkpoint holds to rebuild its network anywhere (osnas.models.checkpoint),
# and the input it was trained on (eval-crossdomain's default size and normalisation)
MODEL_SPEC_KEYS = ("genotype", "arch", "head", "feature_dim", "last_stride", "num_classes")
INPUT_SPEC_KEYS = ("input_size", "mean", "std")

# eval-crossdomain
METRICS = "metrics.json"
RESULTS_MD = "results.md"
EVAL_DIR = "eval"  # default eval folder inside a retrain run

# plot
PLOTS_DIR = "plots"

# a search of several supernets (search.runs > 1): the folder holds config.yaml, run.json with
# the list of its supernets' subfolders, and one complete search run folder per supernet
SUPERNETS_KEY = "supernets"  # run.json key: the supernet subfolders, in order
SUPERNET_DIR = "supernet{k}"  # k = 1 .. search.runs


def supernet_dirs(run_dir) -> list:
    """The supernet folders of a search run folder: its subfolders when it holds several
    supernets (run.json lists them), else [] (the folder is a single supernet's run)."""
    import json
    from pathlib import Path

    p = Path(run_dir) / RUN_JSON
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return []
    names = info.get(SUPERNETS_KEY) if isinstance(info, dict) else None
    return [Path(run_dir) / n for n in names] if isinstance(names, list) else []


def recorded_objective(run_dir):
    """The objective a search run resolved `search.objective=auto` to, as its run.json records it,
    or None where it records none; a run.json that cannot be read is a one-line OsnasError.
    (A run means the same whatever `auto` means in a later version.)"""
    from pathlib import Path

    from osnas.utils import read_json

    p = Path(run_dir) / RUN_JSON
    if not p.is_file():
        return None
    info = read_json(p, "run description")
    return str(info["objective"]) if isinstance(info, dict) and info.get("objective") else None
