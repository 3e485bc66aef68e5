"""The paper's reference numbers (Tan et al., NightCity), in one place.

Reports and charts draw them beside our own results; nothing computes with them.
"""

from __future__ import annotations

#: EGNet on NightCity, Table 1 ("N" columns): mIoU and mEF1 as fractions
EGNET_MIOU = 0.518
EGNET_MEF1 = 0.88
#: Table 2, EGNet row: EF1 per exposure bin, [0, 0.1) ... [0.9, 1.0]
EGNET_EF1 = (0.8690, 0.8751, 0.8819, 0.8819, 0.8828, 0.8814, 0.8739, 0.8738, 0.8689, 0.9155)
