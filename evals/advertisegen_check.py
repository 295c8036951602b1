"""External check on a real ad-copy corpus: AdvertiseGen through SFT then GRPO.

    python -m evals.advertisegen_check [--params configs/real_corpus.yaml]

Runs relate_real.advertisegen in `advertisegen.workdir` with the config's `policy`, `sft`
and `grpo` sections (quality + diversity rewards, the Chinese compliance lexicon), prints
compliance rate, distinct-2 and self-BLEU (character level) on dev prompts before and
after GRPO, and writes metrics/real_advertisegen.json and reports/real_advertisegen.md.
Exit 2 when the data or config is missing or bad.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plumbing import atomic
from plumbing.logs import get_logger
from plumbing.config import ConfigError, load_config
from relate_real import advertisegen as ag
from relate_real.upworthy import working_dir

log = get_logger("evals.advertisegen_check")
METRICS_FILE = Path("metrics") / "real_advertisegen.json"
REPORT_FILE = Path("reports") / "real_advertisegen.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="configs/real_corpus.yaml")
    parser.add_argument("--out", default=str(METRICS_FILE))
    parser.add_argument("--report", default=str(REPORT_FILE))
    args = parser.parse_args(argv)
    try:
        from pipelines.sft import SFTConfig
        from relate_models.grpo_trainer import GRPOStageConfig
        from relate_models.policy import PolicyConfig

        cfg = load_config(ag.AdvertiseGenConfig, "advertisegen", args.params)
        policy_cfg = load_config(PolicyConfig, "policy", args.params)
        sft_cfg = load_config(SFTConfig, "sft", args.params)
        grpo_cfg = load_config(GRPOStageConfig, "grpo", args.params)
        if "ctcvr" in grpo_cfg.rewards:
            raise ConfigError("grpo.rewards.ctcvr: AdvertiseGen has no clicks to train a CTCVR model on; set its weight to 0")
        paths = {name: Path(p).resolve() for name, p in
                 (("train", cfg.train_json), ("dev", cfg.dev_json), ("lexicon", grpo_cfg.lexicon))}
        for name, path in paths.items():
            if not path.is_file():
                raise FileNotFoundError(f"advertisegen {name} file not found: {path} (see docs/real_data.md)")
        with working_dir(Path(cfg.workdir)):
            metrics = ag.run(cfg, policy_cfg, sft_cfg, grpo_cfg, paths["lexicon"], paths["train"], paths["dev"])
    except (ConfigError, ValueError, FileNotFoundError) as err:
        log.error("advertisegen_check: %s", err)
        return 2
    atomic.write_json(args.out, atomic.undefined_as_null(metrics))  # self-BLEU of one text is undefined: null
    report = ag.report_markdown(metrics)
    atomic.write_text(args.report, report)
    print(report)
    print(f"wrote {args.out} and {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
