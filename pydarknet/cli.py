"""Command line: ``python -m pydarknet COMMAND``. Argument parsing and log setup only; the work is in the modules.

Both the modern form (``pydarknet train DATA CFG``) and Darknet's (``pydarknet detector train DATA CFG WEIGHTS
-gpus 0,1``) are accepted.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from .errors import DarknetError

log = logging.getLogger("pydarknet")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)


class _Group(click.Group):
    """Turns the errors a user causes (a missing or malformed file) into `Error: <message>` and exit status 1,
    without a traceback; -v keeps the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (DarknetError, FileNotFoundError) as exc:
            if ctx.params.get("verbose"):
                raise
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--memory-limit", metavar="SIZE", default=None,
              help="Bytes each network may claim, e.g. 48G (default 16G; also PYDARKNET_MEMORY_LIMIT).")
@click.version_option(package_name="pydarknet")
def main(verbose: bool, memory_limit: str | None) -> None:
    """pydarknet: Darknet-compatible YOLOv3 with the GIoU loss.

    Darknet's syntax works too: `pydarknet detector train|valid|test DATA CFG [WEIGHTS] [-flags]`.
    """
    _setup_logging(verbose)
    if memory_limit is not None:
        from .network import MEMORY_LIMIT_VARIABLE, parse_size
        try:
            parse_size(memory_limit, "--memory-limit")
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--memory-limit") from None
        os.environ[MEMORY_LIMIT_VARIABLE] = memory_limit  # networks made in this process and the ones it starts


def _gpu_device(gpu, option: str) -> str | None:
    """-i K / --gpu K: "cuda:K" (a CudaError on a build or machine without that GPU); None: the CPU."""
    from .network import gpu_ids  # noqa: PLC0415

    return None if gpu is None else f"cuda:{gpu_ids(gpu, option)[0]}"


def run_detect(cfg, weights, images, names=None, thresh=0.25, nms=0.45, out_dir=None, precision="f32", gpu=None,
               gpu_option: str = "--gpu") -> None:
    import cv2  # noqa: PLC0415

    from .detect import Detector  # noqa: PLC0415
    from .draw import draw_detections  # noqa: PLC0415
    from .image import read_image  # noqa: PLC0415

    with Detector(cfg, weights, names=names, precision=precision, device=_gpu_device(gpu, gpu_option)) as detector:
        for path in images:
            image = read_image(path)
            start = time.perf_counter()
            detections = detector.detect(image, thresh=thresh, nms=nms)
            click.echo(f"{path}: Predicted in {time.perf_counter() - start:.6f} seconds.")
            for d in detections:
                x, y, w, h = d.box
                click.echo(f"{d.name}: {d.prob * 100:.0f}%\t(x={x:.1f} y={y:.1f} w={w:.1f} h={h:.1f})")
            if out_dir is not None:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                target = Path(out_dir) / (Path(path).stem + "_pred.jpg")
                cv2.imwrite(str(target), draw_detections(image, detections, detector.num_classes))
                click.echo(f"saved {target}")


@main.command()
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--names", type=click.Path(dir_okay=False), help="Class names file (one per line).")
@click.option("--thresh", default=0.25, show_default=True, help="Score threshold.")
@click.option("--nms", default=0.45, show_default=True, help="NMS IoU threshold.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Save annotated images here.")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="bf16: bfloat16 convolutions (CPUs with AMX or AVX512_BF16).")
@click.option("--gpu", "-i", "gpu", type=click.IntRange(min=0), default=None, help="Run on this CUDA device.")
def detect(cfg, weights, images, names, thresh, nms, out_dir, precision, gpu):
    """Detect objects in IMAGES and print them as Darknet does."""
    run_detect(cfg, weights, images, names, thresh, nms, out_dir, precision, gpu=gpu)


@main.command()
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False))
def layers(cfg, weights):
    """Print the layer table and BFLOPs of a cfg."""
    from .network import Network  # noqa: PLC0415

    with Network(cfg, weights) as net:
        click.echo(net.summary())


@main.command()
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Fixed batch size of the model [1].")
@click.option("--dynamic-batch", is_flag=True, help="Leave the batch dimension free (named 'batch').")
@click.option("--opset", type=int, default=None, help="ONNX opset to write [13].")
@click.option("--decode", is_flag=True,
              help="One output (N, boxes, 4+1+classes): boxes in input pixels, objectness, class scores.")
def export(cfg, weights, out, batch, dynamic_batch, opset, decode):
    """Write CFG with WEIGHTS as an ONNX model OUT (needs pydarknet[onnx])."""
    from .network import Network  # noqa: PLC0415

    if batch is not None and dynamic_batch:
        raise click.UsageError("--batch and --dynamic-batch exclude each other")
    with Network(cfg, weights) as net:
        try:
            path = net.export_onnx(out, batch=batch or 1, dynamic_batch=dynamic_batch, opset=opset, decode=decode)
        except ImportError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{path}: input {net.width}x{net.height}, " + ("decoded boxes" if decode else "raw [yolo] inputs"))


@main.command()
@click.option("--repeat", default=10, show_default=True, help="Timed runs per model (after warm-up).")
@click.option("--threads", default=2, show_default=True)
@click.option("--models", default="yolov3-tiny,yolov3", show_default=True)
@click.option("--train/--no-train", default=False, help="Also time training (images/s).")
@click.option("--train-iterations", default=5, show_default=True, type=click.IntRange(1),
              help="Timed training iterations per variant (after one warm-up).")
@click.option("--valid", is_flag=True, help="Also time `valid` on real JPEGs (decoding included).")
@click.option("--valid-images", type=click.Path(exists=True),
              help="Folder of JPEGs or image list for --valid (default: ../shared/realdata's COCO val slice).")
@click.option("--valid-limit", default=20, show_default=True, help="Images used by --valid.")
@click.option("--batches", default="1,4", show_default=True, help="Images per forward, comma-separated.")
@click.option("--peers/--no-peers", default=True, help="Also ONNX Runtime and OpenVINO on the ONNX export, and PyTorch in training (each when installed).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
@click.option("--dist", is_flag=True, help="Instead: data-parallel training (2 MPI ranks against 1 process) and "
                                           "the multi-GPU scaling model.")
def bench(repeat, threads, models, train, train_iterations, valid, valid_images, valid_limit, batches, peers, json_path,
          dist):
    """Time inference (and training, and valid on real JPEGs) against OpenCV DNN, ONNX Runtime and OpenVINO in
    the same run."""
    if dist:
        from .bench_dist import run_dist_bench  # noqa: PLC0415

        run_dist_bench(json_path=json_path)
        return
    from .bench import run_benchmarks  # noqa: PLC0415

    try:
        batch_list = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise click.BadParameter(f"{batches!r}: comma-separated integers", param_hint="--batches") from None
    run_benchmarks(models=models.split(","), repeat=repeat, threads=threads, train=train, batches=batch_list,
                   train_iterations=train_iterations, peers=peers, valid=valid, valid_images=valid_images,
                   valid_limit=valid_limit, json_path=json_path)


def _darknet_args(args: list[str], flags: dict[str, bool]) -> tuple[list[str], dict[str, str | bool]]:
    """Darknet's argument style: `-name value` options anywhere, `-flag` switches, the rest positional.
    `flags` maps every known option to True when it takes a value."""
    positional, options = [], {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and len(a) > 1 and not _is_number(a):
            name = a[1:].lstrip("-")
            if name not in flags:
                raise click.UsageError(f"unknown option {a}; known: " + ", ".join("-" + f for f in sorted(flags)))
            if flags[name]:
                if i + 1 >= len(args):
                    raise click.UsageError(f"option {a} needs a value")
                options[name] = args[i + 1]
                i += 2
                continue
            options[name] = True
        else:
            positional.append(a)
        i += 1
    return positional, options


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# No -h here: click would read Darknet's `-thresh` / `-hier` as the short options -t -h ... and print the help.
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": ["--help"]})
@click.argument("action", type=click.Choice(["train", "valid", "test", "map", "demo"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def detector(action, args):
    """Darknet's syntax: detector train|valid|test|map|demo DATA CFG [WEIGHTS] [IMAGE] [-flags].

    \b
    detector train DATA CFG [WEIGHTS] [-clear] [-gpus 0,1] [-map]
    detector valid DATA CFG WEIGHTS [-prefix DIR] [-i GPU]
    detector test  DATA CFG WEIGHTS [IMAGE] [-thresh T] [-nms N] [-out DIR]
    detector demo  DATA CFG WEIGHTS [VIDEO | -c N] [-thresh T] [-out_filename OUT.mp4] [-dont_show]
    """
    from .datafile import read_data_file  # noqa: PLC0415

    if action == "train":
        pos, opt = _darknet_args(list(args), {"clear": False, "gpus": True, "nogpu": False, "map": False,
                                              "i": True, "dont_show": False, "dist-url": True})
        if len(pos) not in (2, 3):
            raise click.UsageError("detector train DATA CFG [WEIGHTS] [-clear] [-gpus LIST]")
        gpus = opt.get("gpus") if "gpus" in opt else opt.get("i")
        _train(pos[0], pos[1], pos[2] if len(pos) > 2 else None, gpus=gpus, nogpu=bool(opt.get("nogpu")),
               option="-gpus" if "gpus" in opt else "-i", dist_url=opt.get("dist-url"),
               clear=bool(opt.get("clear")), map_eval=bool(opt.get("map")))
    elif action == "valid":
        pos, opt = _darknet_args(list(args), {"prefix": True, "i": True, "gpus": True})
        if len(pos) != 3:
            raise click.UsageError("detector valid DATA CFG WEIGHTS [-prefix DIR] [-i GPU]")
        from .valid import valid  # noqa: PLC0415

        valid(pos[0], pos[1], pos[2], prefix=opt.get("prefix"), gpu=opt.get("i"))
    elif action == "test":
        pos, opt = _darknet_args(list(args), {"thresh": True, "hier": True, "nms": True, "out": True, "i": True,
                                              "dont_show": False})
        if len(pos) < 3:
            raise click.UsageError("detector test DATA CFG WEIGHTS [IMAGE...] [-thresh T]")
        data = read_data_file(pos[0])
        names = data.get("names")
        images = pos[3:]
        if not images:
            images = [click.prompt("Enter Image Path")]
        run_detect(pos[1], pos[2], images, names=names, thresh=float(opt.get("thresh", 0.25)),
                   nms=float(opt.get("nms", 0.45)), out_dir=opt.get("out"), gpu=opt.get("i"), gpu_option="-i")
    elif action == "demo":
        pos, opt = _darknet_args(list(args), {"thresh": True, "hier": True, "nms": True, "c": True, "i": True,
                                              "out_filename": True, "dont_show": False})
        if len(pos) not in (3, 4) or (len(pos) == 4 and "c" in opt):
            raise click.UsageError("detector demo DATA CFG WEIGHTS [VIDEO | -c N] [-thresh T] "
                                   "[-out_filename OUT.mp4] [-dont_show]")
        try:
            source = pos[3] if len(pos) == 4 else int(opt.get("c", 0))
        except ValueError:
            raise click.UsageError(f"-c takes a camera index, got {opt['c']!r}") from None
        from .video import run_demo  # noqa: PLC0415

        run_demo(pos[1], pos[2], source, names=read_data_file(pos[0]).get("names"),
                 thresh=float(opt.get("thresh", 0.25)), nms=float(opt.get("nms", 0.45)),
                 out_filename=opt.get("out_filename"), show=not opt.get("dont_show"))
    else:  # map
        pos, opt = _darknet_args(list(args), {"i": True, "thresh": True})
        if len(pos) != 3:
            raise click.UsageError("detector map DATA CFG WEIGHTS")
        from .train import evaluate_map  # noqa: PLC0415

        evaluate_map(pos[0], pos[1], pos[2])


@main.command(name="train")
@click.argument("data", required=False, type=click.Path(dir_okay=False))
@click.argument("cfg", required=False, type=click.Path(dir_okay=False))
@click.argument("weights", required=False, type=click.Path(dir_okay=False))
@click.option("--clear", is_flag=True, help="Start over: reset the iteration count (seen) of WEIGHTS to 0, and "
              "without WEIGHTS do not resume from the run's backup (later checkpoints are kept in replaced-<time>/).")
@click.option("--gpus", help="GPU ids, e.g. 0,1 (needs the CUDA build): one GPU trains in this process, several "
              "as one process per GPU.")
@click.option("--nogpu", is_flag=True, help="Train on the CPU (whatever the launcher's PYDARKNET_DEVICE says).")
@click.option("--dist-url", envvar="PYDARKNET_DIST_URL",
              help="Rendezvous of a data-parallel run started without MPI: tcp://HOST:PORT or file:///shared/path.")
@click.option("--tensorboard", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="Also write TensorBoard event files, to DIR (default: <run folder>/tensorboard).")
@click.option("--map", "map_eval", is_flag=True, help="Evaluate mAP on the valid list at every checkpoint.")
@click.option("--map-every", type=int, default=None, help="Evaluate mAP every N iterations instead.")
@click.option("--max-batches", type=int, default=None, help="Override max_batches of the cfg.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--workers", type=int, default=None, help="Data loading processes.")
@click.option("--log-url", help="Send metrics to a board at this URL (http://HOST:PORT).")
@click.option("--log-token", envvar="PYDARKNET_BOARD_TOKEN", help="The board's ingestion token.")
@click.option("--seed", type=int, default=None, help="Random seed for data sampling and augmentation.")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="bf16: the convolutions' products in bfloat16 with float32 sums (CPUs with AMX or AVX512_BF16).")
def train_command(data, cfg, weights, clear, gpus, nogpu, dist_url, tensorboard, map_eval, map_every, max_batches,
                  threads, workers, log_url, log_token, seed, precision):
    """Train a network. With no arguments: the built-in default (synthetic data set, GIoU loss, then mAP)."""
    # (not `from . import train`: the package exports the function train under that name)
    from .train import train_default  # noqa: PLC0415

    if data is None:
        train_default(threads=threads, workers=workers)
        return
    if cfg is None:
        raise click.UsageError("train DATA CFG [WEIGHTS]")
    _train(data, cfg, weights, gpus=gpus, nogpu=nogpu, option="--gpus", dist_url=dist_url, clear=clear,
           map_eval=map_eval, map_every=map_every, max_batches=max_batches, threads=threads, workers=workers,
           log_url=log_url, log_token=log_token, seed=seed, precision=precision,
           tensorboard=True if tensorboard == "" else tensorboard)


def _train(data, cfg, weights, *, gpus, nogpu: bool, option: str, dist_url, **options) -> None:
    """Both train syntaxes: the GPUs checked first; several GPUs on one machine start one process per GPU
    (this same command line, each with its device, rank and rendezvous in the environment); then train."""
    from . import distributed  # noqa: PLC0415
    from .network import gpu_ids  # noqa: PLC0415
    # (not `from . import train`: the package exports the function train under that name)
    from .train import train  # noqa: PLC0415

    if nogpu:
        if gpus:
            raise click.UsageError(f"{option} and -nogpu exclude each other")
        train(data, cfg, weights, device="cpu", dist_url=dist_url, **options)
        return
    ids = gpu_ids(gpus, option)
    if len(ids) > 1 and distributed.launch_info().size == 1:
        sys.exit(distributed.launch_local(ids, [sys.executable, "-m", "pydarknet", *sys.argv[1:]],
                                          dist_url=dist_url))
    train(data, cfg, weights, gpus=ids or None, dist_url=dist_url, **options)


def _register_optional_commands() -> None:
    """Commands that live with their modules."""
    try:
        from .valid import valid_command  # noqa: PLC0415

        main.add_command(valid_command, "valid")
    except ImportError as exc:  # pragma: no cover - only while a module is missing
        log.debug("valid command unavailable: %s", exc)
    try:
        from .board.cli import board  # noqa: PLC0415

        main.add_command(board, "board")
    except ImportError as exc:  # pragma: no cover
        log.debug("board command unavailable: %s", exc)


_register_optional_commands()
