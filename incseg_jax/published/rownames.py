"""Which of our methods a row label of the papers' tables is.

Labels are matched after `normalize` (citations `[12]`, `[S13]` and
whitespace dropped, the typographic minus made `-`), so `Lcls−T D` and
`EF , Lcls−T D` of the first paper read as `Lcls-TD` and `EF,Lcls-TD`.
A label missing here stops the transcription: a new row must be mapped
on purpose, never guessed.
"""

from __future__ import annotations

import re

# The first paper's step-0 model M0(0-a) (compare's reference row "M0 (step 0)"); its M0(0-N), every class at
# once, is our `joint`.
STEP0 = "M0"
STEP0_LABEL = re.compile(r"^M0\(0\s*[−-]\s*(\d+)\)$")

# normalized label -> (our method or "" for none, note)
ILT = {
    "Fine-tuning": ("ft", ""),
    "EF": ("ef", ""),
    "E2LF": ("e2lf", ""),
    "LclsD": ("kd_cls", "L_D^cls of the conference version (ILT, ref. [12])"),
    "Lcls-TD": ("kd_cls_t", ""),
    "EF,Lcls-TD": ("ef+kd_cls_t", ""),
    "E2LF,Lcls-TD": ("e2lf+kd_cls_t", ""),
    "LencD": ("kd_enc", ""),
    "LdecD": ("kd_dec", ""),
    "EF,LdecD": ("ef+kd_dec", ""),
    "LSPKDD": ("spkd", "original SPKD (ref. [13])"),
    "LSPKD-avgD": ("spkd_avg", ""),
}

UCD = {
    "FT": ("ft", ""),
    "PI": ("pi", ""),
    "EWG": ("ewc", "printed 'EWG': the EWC row (ref. [15])"),
    "RW": ("rw", ""),
    "LwF": ("lwf", ""),
    "LwF-MC": ("lwf_mc", ""),
    "ILT": ("ilt", ""),
    "ILT*": ("ilt", "results from PLOP"),
    "ILT†": ("", "updated ILT (ref. [50], the first paper): no single preset here; the first paper's own tables "
                 "are ilt/*"),
    "SDR": ("sdr", ""),
    "RECALL‡": ("recall", "the paper's RECALL uses a conditional GAN pretrained on ImageNet; our recall is the "
                          "web-replay variant"),
    "UCD": ("ucd", ""),
    "MiB": ("mib", ""),
    "MiB*": ("mib", "results from PLOP"),
    "MiB+SDR": ("", "no preset: our sdr is SDR's code preset (MiB's unbiased CE and KD included); mib+sdr does "
                    "not combine (two unbiased_kd weights)"),
    "MiB+UCD": ("mib_ucd", ""),
    "PLOP": ("plop", ""),
    "PLOP*": ("plop", "re-implementation"),
    "PLOP+UCD": ("plop_ucd", ""),
    "Inc.Seg": ("", "the EM framework of Yan et al. (ref. [49]): not implemented here"),
    "Joint": ("joint", ""),
}

_MAPS = {"ilt": ILT, "ucd": UCD}


def normalize(label: str) -> str:
  label = re.sub(r"\[S?\d+\]", "", label)
  return re.sub(r"\s+", "", label).replace("−", "-")


def method(paper: str, label: str, where: str) -> tuple[str, str]:
  """(our method or "", note) of the row `label` of `paper`; `where` names the table in errors.

  Raises:
    ValueError: a label with no entry here.
  """
  key = normalize(label)
  if key not in _MAPS[paper]:
    raise ValueError(f"{where}: row {label!r} (read as {key!r}) has no entry in incseg_jax/published/rownames.py; "
                     f"known: {sorted(_MAPS[paper])}")
  return _MAPS[paper][key]
