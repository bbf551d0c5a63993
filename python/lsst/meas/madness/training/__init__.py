"""Training of MADNESS networks.

`quick` trains a reduced-size model in minutes on a CPU for demos and tests. The paper's
three-stage training (SSIM warm-up beta-VAE, flow, VAE-deblender) is a separate piece of work.
"""

from .quick import *
