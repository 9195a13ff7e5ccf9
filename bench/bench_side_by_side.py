"""Side by side with the official FlashFace code: seconds per UNet call and per whole sampling run,
the official implementation and ours in one process, on the same random SD1.5-size weights and the
same inputs, alternating A B A B. CPU, fp32.

    python bench/bench_side_by_side.py --official OFFICIAL_DIR            # per call, 512 px, 4 references
    python bench/bench_side_by_side.py --official OFFICIAL_DIR --photos 1 # one photo padded to four
    python bench/bench_side_by_side.py --official OFFICIAL_DIR --whole-run --steps 35

OFFICIAL_DIR is an unpacked copy of ali-vilab/FlashFace (never committed here); it is imported as
is; its hard-wired device calls are sent to --device (default: the CPU) (it needs `easydict`). The inputs are
what a sampling step really sees: one latent per sample repeated per branch, the same face mask,
the contexts [positive | negative] (2 branches) or [positive | positive | negative] (3 branches),
and `--refs` reference latents made of `--photos` distinct faces padded by repetition, as the
official demo pads 1-3 photos to four. Before any figure is printed the outputs of the two are
compared; a ratio is only reported when they agree.

Prints per layout: seconds per call of each (median and range), the ratio official/ours pair by
pair, the estimate for a default 35-step run (9 two-branch + 26 three-branch calls), and with
--whole-run the seconds of both whole sampling loops and their ratio. Peak memory is printed as
anonymous and file-backed resident memory separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.memory import PeakMemory  # noqa: E402
from bench.workload import StepInputs, synchronize, unet_call  # noqa: E402
from flashface.settings import default  # noqa: E402

TWO_BRANCH_CALLS, THREE_BRANCH_CALLS = 9, 26  # a default 35-step run with launch timestep 750
CALL_TOLERANCE = 1e-4  # largest output difference (relative to the output's scale) that counts as agreeing


OFFICIAL_DEVICE_METHOD = "cuda"  # the method the official code moves every module and tensor with
BEFORE_LAUNCH = default("reference_feature_strength_before_launch")
LAUNCHED = default("reference_feature_strength")


def official_model(official_dir: str, device: torch.device):
    for kind in (nn.Module, torch.Tensor):  # the official code's one way of placing things
        setattr(kind, OFFICIAL_DEVICE_METHOD, lambda self, *a, **k: self.to(device))
    sys.path[:0] = [official_dir, os.path.join(official_dir, "flashface", "all_finetune")]
    from models import sd_v1_ref_unet  # the official flashface/all_finetune/models

    model = sd_v1_ref_unet(pretrained=False, version="sd-v1-5_nonema")
    model.replace_input_conv()
    return model.eval().requires_grad_(False)


def official_call(model, inputs: StepInputs, branches: int, t: int, strength: float):
    model.share_cache.update(
        num_pairs=len(inputs.references),
        ref=inputs.references,
        ref_context=inputs.reference_context,
        masks=inputs.mask,
        similarity=torch.tensor(strength),
    )
    return model(
        inputs.latent.repeat(branches, 1, 1, 1), t=torch.full((inputs.batch,), t), context=inputs.contexts(branches)
    )


def timed(function, *args) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    out = function(*args)
    synchronize(out.device)
    return time.perf_counter() - started, out


def compare_calls(official, ours, inputs: StepInputs, pairs: int) -> dict[int, tuple[float, float]]:
    medians = {}
    for branches, strength in ((2, BEFORE_LAUNCH), (3, LAUNCHED)):
        a = official_call(official, inputs, branches, 500, strength)
        b = unet_call(ours, inputs, branches, 500, strength)
        difference = float((a - b).abs().max() / a.abs().max())
        if difference > CALL_TOLERANCE:
            sys.exit(f"{branches}-branch outputs disagree: max difference {difference:.2e} of the output's scale")
        theirs, mine = [], []
        for _ in range(pairs):
            theirs.append(timed(official_call, official, inputs, branches, 500, strength)[0])
            mine.append(timed(unet_call, ours, inputs, branches, 500, strength)[0])
        ratios = [o / u for o, u in zip(theirs, mine)]
        medians[branches] = statistics.median(theirs), statistics.median(mine)
        print(
            f"{branches}-branch: official {statistics.median(theirs):.2f} s [{min(theirs):.2f}-{max(theirs):.2f}], "
            f"ours {statistics.median(mine):.2f} s [{min(mine):.2f}-{max(mine):.2f}], ratio official/ours "
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}], outputs differ by "
            f"{difference:.1e} of their scale",
            flush=True,
        )
    return medians


def official_run(official_dir: str, model, inputs: StepInputs, noise: torch.Tensor, steps: int) -> torch.Tensor:
    from config import cfg  # the official flashface/all_finetune/config
    from ldm import ops
    from ops.context_diffusion import ContextGaussianDiffusion

    sigmas = ops.noise_schedule(
        schedule=cfg.schedule, n=cfg.num_timesteps, beta_min=cfg.scale_min, beta_max=cfg.scale_max
    )
    diffusion = ContextGaussianDiffusion(sigmas=sigmas, prediction_type=cfg.prediction_type)
    diffusion.num_pairs = len(inputs.references)
    diffusion.classifier = 3.2
    model.share_cache.update(
        num_pairs=len(inputs.references),
        ref=inputs.references,
        similarity=torch.tensor(LAUNCHED),
        ori_similarity=torch.tensor(LAUNCHED),
        lamda_feat_before_ref_guidence=torch.tensor(BEFORE_LAUNCH),
        ref_context=inputs.reference_context,
        masks=inputs.mask,
        classifier=3.2,
        step_to_launch_face_guidence=750,
    )
    return diffusion.sample(
        solver="ddim",
        noise=noise,
        model=model,
        model_kwargs=[{"context": inputs.positive}, {"context": inputs.negative}],
        steps=steps,
        guide_scale=7.5,
        guide_rescale=0.5,
        show_progress=False,
        discretization="trailing",
    )


def our_run(model, inputs: StepInputs, noise: torch.Tensor, steps: int) -> torch.Tensor:
    from flashface.people import PeopleLayout
    from flashface.sampling.guidance import ReferenceGuidedDenoiser
    from flashface.sampling.schedule import NoiseSchedule, sampling_sigmas
    from flashface.sampling.solvers import ddim
    from flashface.settings import OFFICIAL

    schedule = NoiseSchedule()
    one_person = PeopleLayout.one_person(OFFICIAL.face_box, None, len(inputs.faces))
    people = dataclasses.replace(one_person, copies=inputs.copies)  # the faces as the official padding stacks them
    denoiser = ReferenceGuidedDenoiser(
        model, schedule, inputs.positive, inputs.negative, inputs.faces, inputs.mask, people=people
    )
    return ddim(denoiser, noise, sampling_sigmas(schedule, steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="an unpacked copy of ali-vilab/FlashFace")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--refs", type=int, default=4, help="reference latents per call (the official demo: 4)")
    parser.add_argument("--photos", type=int, default=None, help="distinct faces among them (default: all)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--whole-run", action="store_true", help="also time both whole sampling loops")
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="where both run (the official code's placement is redirected)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    from flashface.models.checkpoint import StateDictCheckpoint
    from flashface.models.unet_loading import load_unet

    with PeakMemory() as memory:
        official = official_model(args.official, device)
        ours = load_unet(StateDictCheckpoint(official.state_dict()), device=device)
        inputs = StepInputs(args.size, args.refs, args.photos or args.refs, args.batch, device=device)
        print(
            f"{args.size} px, {args.refs} references of {args.photos or args.refs} photo(s), batch {args.batch}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}",
            flush=True,
        )
        medians = compare_calls(official, ours, inputs, args.pairs)
        whole_official = TWO_BRANCH_CALLS * medians[2][0] + THREE_BRANCH_CALLS * medians[3][0]
        whole_ours = TWO_BRANCH_CALLS * medians[2][1] + THREE_BRANCH_CALLS * medians[3][1]
        print(
            f"default 35-step run from the per-call medians ({TWO_BRANCH_CALLS} two-branch + {THREE_BRANCH_CALLS} "
            f"three-branch calls): official {whole_official:.0f} s, ours {whole_ours:.0f} s, ratio "
            f"{whole_official / whole_ours:.2f}",
            flush=True,
        )
        if args.whole_run:
            noise = torch.randn(args.batch, 4, inputs.h, inputs.h, generator=torch.Generator().manual_seed(1)).to(
                device
            )
            seconds_official, x_official = timed(official_run, args.official, official, inputs, noise, args.steps)
            seconds_ours, x_ours = timed(our_run, ours, inputs, noise, args.steps)
            difference = float((x_official - x_ours).abs().max())
            print(
                f"whole {args.steps}-step run: official {seconds_official:.0f} s, ours {seconds_ours:.0f} s, ratio "
                f"{seconds_official / seconds_ours:.2f}; final latents differ by at most {difference:.1e}"
            )
    print(memory)


if __name__ == "__main__":
    main()
