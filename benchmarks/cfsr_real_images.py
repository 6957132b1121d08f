"""CFSR with the official x2/x3/x4 weights against bicubic upsampling on scikit-image's bundled photos.

    python benchmarks/cfsr_real_images.py [--weights-dir ../shared/weights/cfsr]

PSNR/SSIM on the Y channel with a border of `scale` pixels cropped (BasicSR convention); LR images are
bicubic downsamplings of the photos. Prints the table and writes benchmarks/results/cfsr_real_images.json.
"""
import argparse
import json
from pathlib import Path

import convformer
from convformer.sr.data import BUNDLED_PHOTOS, bundled_photo
from convformer.sr.task import score_image
from convformer.weights.hub import local_weight_dirs


def evaluate(weights_dir: Path, photos=BUNDLED_PHOTOS, scales=(2, 3, 4)) -> list[dict]:
    rows = []
    for scale in scales:
        model = convformer.create_model(f"cfsr_x{scale}", pretrained=str(weights_dir / f"CFSR_x{scale}.pth")).eval()
        for name in photos:
            scores, (_, _, hr) = score_image(model, None, bundled_photo(name), scale)
            rows.append({"scale": scale, "photo": name, "size": list(hr.shape[-2:]),
                         "bicubic_psnr": scores["bicubic_psnr"], "cfsr_psnr": scores["psnr"],
                         "bicubic_ssim": scores["bicubic_ssim"], "cfsr_ssim": scores["ssim"]})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", default=None,
                        help="folder with CFSR_x{2,3,4}.pth [default: the first of convformer's local weight folders "
                             "that has them]")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "cfsr_real_images.json"))
    args = parser.parse_args(argv)
    weights_dir = Path(args.weights_dir) if args.weights_dir else next(
        (d / "cfsr" for d in local_weight_dirs() if (d / "cfsr" / "CFSR_x2.pth").is_file()), None)
    if weights_dir is None:
        raise SystemExit(f"CFSR_x2.pth not found in {[str(d / 'cfsr') for d in local_weight_dirs()]}; pass --weights-dir")
    rows = evaluate(weights_dir)
    print(f"{'scale':>5}  {'photo':<22}{'bicubic PSNR/SSIM':>20}{'CFSR PSNR/SSIM':>20}{'gain dB':>9}")
    for r in rows:
        print(f"{r['scale']:>5}  {r['photo']:<22}{r['bicubic_psnr']:>11.2f} / {r['bicubic_ssim']:.4f}"
              f"{r['cfsr_psnr']:>11.2f} / {r['cfsr_ssim']:.4f}{r['cfsr_psnr'] - r['bicubic_psnr']:>9.2f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
