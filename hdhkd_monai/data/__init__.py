"""Data: from files on disk to the [0, 1] 3-channel tensors the networks take.

- ``datalist``: folder layouts / CSV -> MONAI datalist JSON (training, validation, test), split by patient;
- ``transforms``: the project's transforms in the configs' preprocessing lists (the 2-D ``SliceReader``,
  ``RequireRanged``, ``EnsureMaskd``), ``ct_window`` and the preprocessing fingerprint;
- ``modalities``: the registry of modalities (slice units, foreground, orientation);
- ``volumes`` and ``dicom``: NIfTI / ITK / DICOM / TIFF volumes in physical units (HU, SUV), checked;
- ``slices``: volumes -> ``.npy`` slices + a datalist whose items carry their volume; ``aggregate``: volume scores;
- ``phantom``: the synthetic OCT demo data set;
- ``bad_files``: the opt-in ``skip_bad`` policy (the error types are in ``hdhkd_monai.errors``).

Submodules are imported on use, so that ``import hdhkd_monai.data.datalist`` stays light.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""
