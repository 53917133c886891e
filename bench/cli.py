"""The `dpbench` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dpbench.benchmark import bench_command
from dpbench.errors import DpbenchError
from dpbench.leaderboard.cli import leaderboard_command
from dpbench.models.lora import LoraSpec
from dpbench.options import parse_pairs
from dpbench.output import set_verbose
from dpbench.registry import ATTACKS, METHODS, MODELS, TASKS, UNLEARNERS
from dpbench.run_folder import RunFolder, check_runs_dir
from dpbench.schemas import load_result
from dpbench.spec import CANARY_KINDS, CANARY_PLACEMENTS, EVAL_SPLITS, PRECISIONS, RunSpec, load_spec_file, merge
from dpbench.summary import print_summary
from dpbench.sweep import sweep_command
from dpbench.unlearning.cli import unlearn_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dpbench")
@click.option("--verbose", "-v", is_flag=True, help="Show the libraries' own warnings and progress bars.")
def cli(verbose: bool) -> None:
    """Benchmark and audit differentially private fine-tuning of multimodal LLMs."""
    set_verbose(verbose)


@cli.command()
@click.option("--method", help="Fine-tuning method (see `dpbench list methods`). [default: dpsgd]")
@click.option("--task", help="Task (see `dpbench list tasks`). [default: scienceqa]")
@click.option(
    "--model",
    help="Registered model name, or a local checkpoint folder (or cached hub id) of a LLaVA, Qwen2-VL or "
    "Idefics3/SmolVLM model. [default: tiny-llava]",
)
@click.option("--data-dir", help="Local copy of the task's dataset; without it, the embedded sample is used.")
@click.option("--epsilon", type=float, help="Target ε for the planned steps. [default: 8]")
@click.option("--delta", type=float, help="δ. [default: 1/(10·n_train)]")
@click.option(
    "--accountant",
    type=click.Choice(["rdp", "prv"]),
    help="Privacy accountant for σ's calibration and the headline ε (RDP is reported beside PRV). [default: prv]",
)
@click.option("--max-grad-norm", type=float, help="Per-example clipping bound C. [default: 1.0]")
@click.option("--steps", type=int, help="Optimisation steps (logical batches). [default: 150]")
@click.option("--batch-size", type=int, help="Expected logical batch size (Poisson sampling). [default: 64]")
@click.option(
    "--physical-batch-size", type=int, help="Largest batch per forward/backward (memory bound). [default: 32]"
)
@click.option("--lr", type=float, help="Learning rate (Adam). [default: the method's, see `dpbench list methods`]")
@click.option("--seed", type=int, help="Seed for sampling, noise and initialisation. [default: 0]")
@click.option("--n-train", type=int, help="Train on a random subset of this many examples.")
@click.option("--trainable", help="Comma-separated parameter groups: vision_tower, projector, language_model.")
@click.option(
    "--lora",
    metavar="TEXT",
    help="LoRA adapters on the language model (with language_model in --trainable it "
    "trains them only): r=R,alpha=A[,dropout=P][,targets=NAME,NAME...], e.g. r=8,alpha=16,targets=q_proj,v_proj; "
    "'none' turns a config's off. [default: off]",
)
@click.option(
    "--token-pruning",
    metavar="TEXT",
    help="Visual-token pruning, a transform of the model: "
    "STRATEGY[,keep_ratio=R][,keep_count=K] (strategies: random, merge, cls-attention, text-guided), "
    "keep_ratio=R for the method's own strategy, or 'none'. [default: the method's, see `dpbench list methods`]",
)
@click.option("--device", help="cpu, cuda, cuda:N or mps. [default: cpu]")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Training forwards: fp32, or bf16 autocast (fp32 master weights, optimiser state and clipping). "
    "[default: fp32]",
)
@click.option(
    "--nproc",
    type=int,
    help="Training processes on this machine (DDP through torch's launcher: gloo on the CPU, one GPU each "
    "with --device cuda); under torchrun, its world size. [default: 1]",
)
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@click.option(
    "--attacks",
    help="Comma-separated membership-inference attacks for the audit. [default: all of `dpbench list attacks`; "
    "lira and rmia only with --audit-references above 0]",
)
@click.option("--no-audit", is_flag=True, help="Skip the membership-inference audit.")
@click.option(
    "--audit-members",
    type=int,
    help="Members the attacks score, each matched by a non-member (seeded samples; fewer if the data has "
    "fewer; a config's audit.members: null scores every one). [default: 500]",
)
@click.option(
    "--audit-references",
    type=int,
    help="Reference models for lira/rmia, each trained like a non-private fine-tuning (0 skips those "
    "attacks). [default: 0]",
)
@click.option(
    "--canaries", type=int, help="One-run canary audit with this many canaries (changes the training set). [default: 0]"
)
@click.option(
    "--canary-kind",
    type=click.Choice(CANARY_KINDS),
    help="memorable: a random-noise image whose target is a token no training target uses; mislabelled: a "
    "training example with a wrong answer. [default: memorable]",
)
@click.option(
    "--gradient-canaries",
    type=int,
    help="White-box audit: this many gradient canaries inside the training steps, every released gradient "
    "observed; on an audit-only parameter block, so training is unchanged (0: off). [default: 100000 for the "
    "gradient methods (fewer past 2 500 steps: the auditor keeps 250 million releases at most), 0 for dpzo]",
)
@click.option(
    "--canary-placement",
    type=click.Choice(CANARY_PLACEMENTS),
    help="Where the gradient canaries sit: audit-block (no forward reads it) or model (trained coordinates: "
    "they change training, and see faults in real layers' per-example gradients). [default: audit-block]",
)
@click.option("--eval-limit", type=int, help="Evaluate on the first N examples of the evaluation split only.")
@click.option(
    "--eval-split",
    type=click.Choice(EVAL_SPLITS),
    help="Where utility is measured: test (default), or the held-out validation examples, "
    "to choose hyperparameters without looking at the test split.",
)
@click.option("--config", type=click.Path(dir_okay=False), help="YAML/TOML run spec; flags override it.")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--save-checkpoint", is_flag=True, help="Save the fine-tuned model in the run folder.")
@click.option("--if-not-done", is_flag=True, hidden=True, help="Exit 75 if another process finished the run (sweeps).")
def run(**kw) -> None:
    """Fine-tune, account, audit and record one run: runs/<run-id>/result.json."""
    spec_dict = load_spec_file(kw["config"]) if kw["config"] else {}
    top = {
        k: kw[k]
        for k in ("method", "task", "model", "data_dir", "device", "eval_limit", "eval_split")
        if kw[k] is not None
    }
    privacy = {k: kw[k] for k in ("epsilon", "delta", "accountant", "max_grad_norm") if kw[k] is not None}
    training = {
        k: kw[k]
        for k in (
            "steps",
            "batch_size",
            "physical_batch_size",
            "lr",
            "seed",
            "n_train",
            "trainable",
            "nproc",
            "precision",
        )
        if kw[k] is not None
    }
    audit_flags = (
        ("members", "audit_members"),
        ("references", "audit_references"),
        ("canaries", "canaries"),
        ("canary_kind", "canary_kind"),
        ("gradient_canaries", "gradient_canaries"),
        ("canary_placement", "canary_placement"),
    )
    audit = {k: kw[f] for k, f in audit_flags if kw[f] is not None}
    flags = {**top, "privacy": privacy, "training": training, "audit": audit}
    if kw["options"]:
        flags["method_options"] = parse_pairs(kw["options"], "--option")
    if kw["token_pruning"] is not None:
        flags["token_pruning"] = kw["token_pruning"]
    if kw["lora"] is not None:  # every field (defaults filled in): it replaces a config's lora, never merges into it
        lora = LoraSpec.from_value(kw["lora"])
        flags["lora"] = lora.to_dict() if lora is not None else None
    if kw["attacks"] is not None:
        flags["attacks"] = [a.strip() for a in kw["attacks"].split(",") if a.strip()]
    spec = RunSpec.from_dict(merge(spec_dict, flags))
    check_runs_dir(kw["runs_dir"])  # before anything slow: a runs folder that cannot be made is one line
    # torch and the models load only for a command that needs them
    from dpbench.distributed import launched_size
    from dpbench.runner import launch
    from dpbench.runner import run as run_one

    size = launched_size()
    if size > 1 and spec.training.nproc == 1:  # plain torchrun: its world is the run's
        spec = spec.replace(**{"training.nproc": size})
    options = {"audit": not kw["no_audit"], "save_checkpoint": kw["save_checkpoint"], "if_not_done": kw["if_not_done"]}
    if spec.training.nproc > 1 and size == 1:
        launch(spec, Path(kw["runs_dir"]), **options)  # rank 0 prints the summary
        return
    result = run_one(spec, Path(kw["runs_dir"]), **options)
    if result is not None:
        print_summary(result, RunFolder.of(kw["runs_dir"], result.run_id))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--attacks", help="Comma-separated attacks (needs the run's checkpoint).")
def audit(run_dir: str, attacks: str | None) -> None:
    """Audit a finished run again; rewrite its audit section and report."""
    names = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else None
    check_runs_dir(run_dir, "run folder")  # the audit rewrites its result and report there
    from dpbench.reaudit import reaudit  # torch and the models load only for a command that needs them

    result = reaudit(Path(run_dir), names)
    print_summary(result, RunFolder(Path(run_dir)))


@cli.command("list")
@click.argument("kind", type=click.Choice(["methods", "tasks", "attacks", "models", "unlearners"]))
def list_(kind: str) -> None:
    """List the registered methods, tasks, attacks, models or unlearning methods."""
    registry = {"methods": METHODS, "tasks": TASKS, "attacks": ATTACKS, "models": MODELS, "unlearners": UNLEARNERS}[
        kind
    ]
    for name in registry.names():
        obj = registry.get(name)
        doc = (obj.__doc__ or "").strip().splitlines()
        line = doc[0] if doc else ""
        if kind == "methods":  # the defaults that differ between methods
            lr = "lr " + format(obj.default_lr, "g") if obj.default_lr else "lr: option"
            pruning = obj.default_token_pruning
            tokens = f"tokens {pruning.strategy} {pruning.keep_ratio:g}" if pruning.enabled else "tokens all"
            line = f"{lr:12s}{tokens:20s}{line}"
        click.echo(f"{name:16s} {line}")
    if kind == "models":
        from dpbench.models.architectures import ARCHITECTURES

        click.echo("local checkpoints (--model PATH, a folder of one of these model types, loaded offline):")
        for name in ARCHITECTURES.names():
            doc = (ARCHITECTURES.get(name).__doc__ or "").strip().splitlines()
            click.echo(f"  {name:14s} {doc[0] if doc else ''}")


@cli.command("build-model")
@click.argument("folder", type=click.Path(file_okay=False))
def build_model(folder: str) -> None:
    """Rebuild the embedded tiny-llava from its recipe into FOLDER (10 to 20 minutes on 2 CPU cores).

    dpbench ships the weights the committed results were measured on; a rebuild on another CPU
    need not give the same bits. Use the folder with --model FOLDER."""
    from dpbench.models.loading import SHIPPED_WEIGHTS, TinyLlava, build_tiny_llava, weights_sha256

    build_tiny_llava(folder)
    built, shipped = weights_sha256(folder), weights_sha256(SHIPPED_WEIGHTS / TinyLlava().key())
    same = "the same as" if built == shipped else "not the same as"
    click.echo(f"built {folder}: weights sha256 {built}, {same} the shipped weights' ({shipped})")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
def validate(files: tuple[str, ...]) -> None:
    """Check result (or `dpbench bench`) files against their schema; list every error with its JSON path."""
    bad = 0
    for f in files:
        try:
            load_result(f)
            click.echo(f"{f}: valid")
        except DpbenchError as e:
            bad += 1
            click.echo(str(e), err=True)
    if bad:
        sys.exit(1)


@cli.command(
    "lm-eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval_command(args: tuple[str, ...]) -> None:
    """lm-evaluation-harness with the `dpbench` model type and dpbench's task folder, e.g.
    `dpbench lm-eval --model dpbench --model_args run_dir=runs/ID --tasks scienceqa_img_dpbench`."""
    try:
        from dpbench.lm_eval_model import main as lm_eval_main
    except ImportError as e:
        raise DpbenchError(f"lm-eval is not installed ({e}); pip install 'dpbench[lm-eval]'") from None
    lm_eval_main(list(args))


cli.add_command(bench_command, "bench")
cli.add_command(unlearn_command, "unlearn")
cli.add_command(leaderboard_command, "leaderboard")
cli.add_command(sweep_command, "sweep")


def main(argv: list[str] | None = None) -> None:
    """Entry point: a DpbenchError becomes one line on stderr and exit code 2."""
    try:
        code = cli.main(args=argv, prog_name="dpbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except DpbenchError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
