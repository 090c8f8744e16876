"""The published numbers this library reproduces, as data (source: /work/shared/docs/paper-tables.md).

Papers: P-MU = Mamba-UNet (arXiv 2402.05079), fully supervised; P-SMU = Semi-Mamba-UNet
(Knowledge-Based Systems 300, 2024), semi-supervised.  Each row is keyed by
(table, method, networks, labeled cases) in our vocabulary:

- method: the name our `METHODS` registry uses (MT mean_teacher, DAN adversarial, ICT ict,
  ADVENT entropy_min, UAMT uamt, DCN co_training, CPS cps, Semi-Mamba-UNet cross_teaching;
  the fully supervised rows are "supervised");
- networks: sorted model names, one per trained network (CPS and the Table 6 "2 x" rows train two
  copies of one backbone; AttentionUNet and TransUNet are not implemented here, kept for the record);
- labeled cases: labeled patients (ACDC) or cases (PROMISE12); None means every training case.

Metrics use our keys (dice iou acc pre sen spe hd95 asd); a metric the paper does not report
(IoU in P-SMU, all but Dice for PROMISE12) is absent.  The papers report means over the test
volumes and foreground classes, HD95 and ASD in pixels.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class PaperRow:
    table: str  # e.g. "P-SMU Table 2"
    dataset: str  # acdc | synapse | promise12
    label: str  # the row's name in the paper
    method: str
    networks: Tuple[str, ...]  # sorted
    labeled_cases: Optional[int]
    metrics: Dict[str, float]

    @property
    def key(self) -> Tuple[str, str, Tuple[str, ...], Optional[int]]:
        return (self.table, self.method, self.networks, self.labeled_cases)


def _row(table: str, dataset: str, label: str, method: str, networks: Tuple[str, ...], labeled: Optional[int],
         metrics: Dict[str, float]) -> PaperRow:
    return PaperRow(table, dataset, label, method, tuple(sorted(networks)), labeled, metrics)


PAPER_ROWS: Tuple[PaperRow, ...] = (
    _row("P-MU Table 1", "acdc", "UNet", "supervised", ("unet",), None, {"dice": 0.9248, "iou": 0.8645, "acc": 0.9969, "pre": 0.9157, "sen": 0.9364, "spe": 0.9883, "hd95": 2.7655, "asd": 0.8180}),
    _row("P-MU Table 1", "acdc", "AttentionUNet", "supervised", ("attention_unet",), None, {"dice": 0.9249, "iou": 0.8647, "acc": 0.9970, "pre": 0.9239, "sen": 0.9260, "spe": 0.9858, "hd95": 3.4156, "asd": 0.9765}),
    _row("P-MU Table 1", "acdc", "TransUNet", "supervised", ("transunet",), None, {"dice": 0.9196, "iou": 0.8561, "acc": 0.9968, "pre": 0.9187, "sen": 0.9207, "spe": 0.9846, "hd95": 2.7742, "asd": 0.8324}),
    _row("P-MU Table 1", "acdc", "Swin-UNet", "supervised", ("swin_unet",), None, {"dice": 0.9188, "iou": 0.8545, "acc": 0.9968, "pre": 0.9151, "sen": 0.9231, "spe": 0.9857, "hd95": 3.1817, "asd": 0.9932}),
    _row("P-MU Table 1", "acdc", "Mamba-UNet", "supervised", ("mamba_unet",), None, {"dice": 0.9281, "iou": 0.8698, "acc": 0.9972, "pre": 0.9275, "sen": 0.9289, "spe": 0.9859, "hd95": 2.4645, "asd": 0.7677}),
    _row("P-MU Table 2", "synapse", "UNet", "supervised", ("unet",), None, {"dice": 0.6299, "iou": 0.5198, "acc": 0.9969, "pre": 0.6224, "sen": 0.6541, "spe": 0.9889, "hd95": 37.7342, "asd": 10.0725}),
    _row("P-MU Table 2", "synapse", "AttentionUNet", "supervised", ("attention_unet",), None, {"dice": 0.6069, "iou": 0.4964, "acc": 0.9962, "pre": 0.5959, "sen": 0.6394, "spe": 0.9890, "hd95": 74.2449, "asd": 25.8229}),
    _row("P-MU Table 2", "synapse", "TransUNet", "supervised", ("transunet",), None, {"dice": 0.6092, "iou": 0.5017, "acc": 0.9970, "pre": 0.6027, "sen": 0.6318, "spe": 0.9858, "hd95": 33.8126, "asd": 10.8979}),
    _row("P-MU Table 2", "synapse", "Swin-UNet", "supervised", ("swin_unet",), None, {"dice": 0.6178, "iou": 0.5121, "acc": 0.9972, "pre": 0.6126, "sen": 0.6357, "spe": 0.9859, "hd95": 30.5414, "asd": 9.2504}),
    _row("P-MU Table 2", "synapse", "Mamba-UNet", "supervised", ("mamba_unet",), None, {"dice": 0.6429, "iou": 0.5405, "acc": 0.9975, "pre": 0.6452, "sen": 0.6603, "spe": 0.9890, "hd95": 24.4725, "asd": 6.4717}),
    _row("P-SMU Table 2", "acdc", "MT + Swin-UNet", "mean_teacher", ("swin_unet",), 3, {"dice": 0.7506, "acc": 0.9910, "pre": 0.7918, "sen": 0.7178, "spe": 0.9394, "hd95": 10.4621, "asd": 3.5301}),
    _row("P-SMU Table 2", "acdc", "DAN + Swin-UNet", "adversarial", ("swin_unet",), 3, {"dice": 0.7252, "acc": 0.9901, "pre": 0.7695, "sen": 0.6903, "spe": 0.9337, "hd95": 12.9800, "asd": 4.3823}),
    _row("P-SMU Table 2", "acdc", "ICT + Swin-UNet", "ict", ("swin_unet",), 3, {"dice": 0.7504, "acc": 0.9910, "pre": 0.7923, "sen": 0.7180, "spe": 0.9392, "hd95": 9.8026, "asd": 3.1055}),
    _row("P-SMU Table 2", "acdc", "ADVENT + Swin-UNet", "entropy_min", ("swin_unet",), 3, {"dice": 0.7489, "acc": 0.9910, "pre": 0.7964, "sen": 0.7128, "spe": 0.9373, "hd95": 11.1535, "asd": 3.0907}),
    _row("P-SMU Table 2", "acdc", "UAMT + Swin-UNet", "uamt", ("swin_unet",), 3, {"dice": 0.7442, "acc": 0.9909, "pre": 0.7902, "sen": 0.7108, "spe": 0.9393, "hd95": 10.2955, "asd": 2.8222}),
    _row("P-SMU Table 2", "acdc", "DCN + Swin-UNet", "co_training", ("swin_unet",), 3, {"dice": 0.7603, "acc": 0.9914, "pre": 0.8118, "sen": 0.7207, "spe": 0.9376, "hd95": 10.1783, "asd": 3.1478}),
    _row("P-SMU Table 2", "acdc", "MT + UNet", "mean_teacher", ("unet",), 3, {"dice": 0.7256, "acc": 0.9885, "pre": 0.8217, "sen": 0.6670, "spe": 0.9044, "hd95": 24.0480, "asd": 9.7662}),
    _row("P-SMU Table 2", "acdc", "DAN + UNet", "adversarial", ("unet",), 3, {"dice": 0.7657, "acc": 0.9905, "pre": 0.8296, "sen": 0.7152, "spe": 0.9199, "hd95": 21.1226, "asd": 7.3434}),
    _row("P-SMU Table 2", "acdc", "ICT + UNet", "ict", ("unet",), 3, {"dice": 0.7490, "acc": 0.9906, "pre": 0.8827, "sen": 0.6633, "spe": 0.9013, "hd95": 11.2109, "asd": 4.5181}),
    _row("P-SMU Table 2", "acdc", "ADVENT + UNet", "entropy_min", ("unet",), 3, {"dice": 0.6656, "acc": 0.9833, "pre": 0.6487, "sen": 0.6900, "spe": 0.9190, "hd95": 42.8011, "asd": 16.6207}),
    _row("P-SMU Table 2", "acdc", "UAMT + UNet", "uamt", ("unet",), 3, {"dice": 0.7472, "acc": 0.9901, "pre": 0.8164, "sen": 0.6943, "spe": 0.9168, "hd95": 21.7492, "asd": 7.7489}),
    _row("P-SMU Table 2", "acdc", "DCN + UNet", "co_training", ("unet",), 3, {"dice": 0.7312, "acc": 0.9894, "pre": 0.8316, "sen": 0.6626, "spe": 0.9022, "hd95": 24.6607, "asd": 10.1996}),
    _row("P-SMU Table 2", "acdc", "Semi-Mamba-UNet", "cross_teaching", ("mamba_unet", "unet"), 3, {"dice": 0.8386, "acc": 0.9936, "pre": 0.8861, "sen": 0.7992, "spe": 0.9483, "hd95": 6.2139, "asd": 1.6406}),
    _row("P-SMU Table 3", "acdc", "MT + Swin-UNet", "mean_teacher", ("swin_unet",), 7, {"dice": 0.8678, "acc": 0.9949, "pre": 0.8700, "sen": 0.8670, "spe": 0.9745, "hd95": 7.3576, "asd": 2.1834}),
    _row("P-SMU Table 3", "acdc", "DAN + Swin-UNet", "adversarial", ("swin_unet",), 7, {"dice": 0.8288, "acc": 0.9936, "pre": 0.8261, "sen": 0.8375, "spe": 0.9721, "hd95": 9.9132, "asd": 2.7309}),
    _row("P-SMU Table 3", "acdc", "ICT + Swin-UNet", "ict", ("swin_unet",), 7, {"dice": 0.8621, "acc": 0.9947, "pre": 0.8624, "sen": 0.8632, "spe": 0.9746, "hd95": 8.7211, "asd": 2.5562}),
    _row("P-SMU Table 3", "acdc", "ADVENT + Swin-UNet", "entropy_min", ("swin_unet",), 7, {"dice": 0.8669, "acc": 0.9949, "pre": 0.8688, "sen": 0.8660, "spe": 0.9743, "hd95": 7.1383, "asd": 2.2608}),
    _row("P-SMU Table 3", "acdc", "UAMT + Swin-UNet", "uamt", ("swin_unet",), 7, {"dice": 0.8701, "acc": 0.9950, "pre": 0.8721, "sen": 0.8697, "spe": 0.9754, "hd95": 6.7226, "asd": 2.0975}),
    _row("P-SMU Table 3", "acdc", "DCN + Swin-UNet", "co_training", ("swin_unet",), 7, {"dice": 0.8608, "acc": 0.9946, "pre": 0.8511, "sen": 0.8724, "spe": 0.9777, "hd95": 8.8474, "asd": 2.6705}),
    _row("P-SMU Table 3", "acdc", "CPS + Swin-UNet", "cps", ("swin_unet", "swin_unet"), 7, {"dice": 0.8933, "acc": 0.9957, "pre": 0.8846, "sen": 0.9032, "spe": 0.9821, "hd95": 5.5661, "asd": 1.6418}),
    _row("P-SMU Table 3", "acdc", "MT + UNet", "mean_teacher", ("unet",), 7, {"dice": 0.8781, "acc": 0.9949, "pre": 0.8836, "sen": 0.8735, "spe": 0.9690, "hd95": 10.9691, "asd": 3.3246}),
    _row("P-SMU Table 3", "acdc", "DAN + UNet", "adversarial", ("unet",), 7, {"dice": 0.8766, "acc": 0.9948, "pre": 0.8814, "sen": 0.8727, "spe": 0.9700, "hd95": 8.6977, "asd": 2.4750}),
    _row("P-SMU Table 3", "acdc", "ICT + UNet", "ict", ("unet",), 7, {"dice": 0.8879, "acc": 0.9953, "pre": 0.8996, "sen": 0.8779, "spe": 0.9696, "hd95": 6.7011, "asd": 1.9696}),
    _row("P-SMU Table 3", "acdc", "ADVENT + UNet", "entropy_min", ("unet",), 7, {"dice": 0.8777, "acc": 0.9949, "pre": 0.8877, "sen": 0.8703, "spe": 0.9674, "hd95": 11.0979, "asd": 2.9367}),
    _row("P-SMU Table 3", "acdc", "UAMT + UNet", "uamt", ("unet",), 7, {"dice": 0.8798, "acc": 0.9949, "pre": 0.8778, "sen": 0.8821, "spe": 0.9726, "hd95": 10.2134, "asd": 3.1926}),
    _row("P-SMU Table 3", "acdc", "DCN + UNet", "co_training", ("unet",), 7, {"dice": 0.8831, "acc": 0.9952, "pre": 0.8897, "sen": 0.8785, "spe": 0.9706, "hd95": 8.6978, "asd": 2.7026}),
    _row("P-SMU Table 3", "acdc", "CPS + UNet", "cps", ("unet", "unet"), 7, {"dice": 0.8933, "acc": 0.9956, "pre": 0.8965, "sen": 0.8912, "spe": 0.9749, "hd95": 7.8319, "asd": 2.2767}),
    _row("P-SMU Table 3", "acdc", "Semi-Mamba-UNet", "cross_teaching", ("mamba_unet", "unet"), 7, {"dice": 0.9114, "acc": 0.9964, "pre": 0.9088, "sen": 0.9146, "spe": 0.9821, "hd95": 3.9124, "asd": 1.1698}),
    _row("P-SMU Table 6", "acdc", "2 x Swin-UNet", "cross_teaching", ("swin_unet", "swin_unet"), 3, {"dice": 0.7878, "acc": 0.9918, "pre": 0.8066, "sen": 0.7795, "spe": 0.9577, "hd95": 9.0240, "asd": 2.3592}),
    _row("P-SMU Table 6", "acdc", "2 x Mamba-UNet", "cross_teaching", ("mamba_unet", "mamba_unet"), 3, {"dice": 0.8025, "acc": 0.9924, "pre": 0.8623, "sen": 0.7558, "spe": 0.9379, "hd95": 7.3952, "asd": 2.1257}),
    _row("P-SMU Table 6", "acdc", "UNet + Swin-UNet", "cross_teaching", ("swin_unet", "unet"), 3, {"dice": 0.8292, "acc": 0.9933, "pre": 0.8591, "sen": 0.8052, "spe": 0.9557, "hd95": 5.7014, "asd": 1.7237}),
    _row("P-SMU Table 6", "acdc", "UNet + Mamba-UNet", "cross_teaching", ("mamba_unet", "unet"), 3, {"dice": 0.8386, "acc": 0.9936, "pre": 0.8861, "sen": 0.7992, "spe": 0.9483, "hd95": 6.2139, "asd": 1.6406}),
    _row("P-SMU Table 6", "acdc", "2 x Swin-UNet", "cross_teaching", ("swin_unet", "swin_unet"), 7, {"dice": 0.8899, "acc": 0.9955, "pre": 0.8784, "sen": 0.9031, "spe": 0.9823, "hd95": 5.9222, "asd": 1.6960}),
    _row("P-SMU Table 6", "acdc", "2 x Mamba-UNet", "cross_teaching", ("mamba_unet", "mamba_unet"), 7, {"dice": 0.9006, "acc": 0.9959, "pre": 0.8913, "sen": 0.9109, "spe": 0.9826, "hd95": 6.7631, "asd": 1.8349}),
    _row("P-SMU Table 6", "acdc", "UNet + Swin-UNet", "cross_teaching", ("swin_unet", "unet"), 7, {"dice": 0.9105, "acc": 0.9963, "pre": 0.9057, "sen": 0.9161, "spe": 0.9826, "hd95": 5.4172, "asd": 1.4506}),
    _row("P-SMU Table 6", "acdc", "UNet + Mamba-UNet", "cross_teaching", ("mamba_unet", "unet"), 7, {"dice": 0.9114, "acc": 0.9964, "pre": 0.9088, "sen": 0.9146, "spe": 0.9821, "hd95": 3.9124, "asd": 1.1698}),
    _row("P-SMU PROMISE12", "promise12", "Semi-Mamba-UNet", "cross_teaching", ("mamba_unet", "unet"), 8, {"dice": 0.7627}),
    _row("P-SMU PROMISE12", "promise12", "Semi-Mamba-UNet", "cross_teaching", ("mamba_unet", "unet"), 12, {"dice": 0.8216}),
)

PAPER_TABLES: Dict[Tuple[str, str, Tuple[str, ...], Optional[int]], PaperRow] = {row.key: row for row in PAPER_ROWS}


def find_paper_rows(dataset: str, method: str, networks: Sequence[str], labeled_cases: Optional[int]) -> List[PaperRow]:
    """Every published row for this experiment, in table order (a row may appear in two tables,
    e.g. Semi-Mamba-UNet in P-SMU Tables 2 and 6)."""
    nets = tuple(sorted(networks))
    return [
        row for row in PAPER_ROWS
        if row.dataset == dataset.lower() and row.method == method and row.networks == nets
        and row.labeled_cases == labeled_cases
    ]
