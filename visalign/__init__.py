"""visalign: align generative models with human preferences."""

__version__ = "0.1.0.dev0"

from visalign._quiet import BNB_CPU_KERNELS as _BNB_CPU_KERNELS, drop_messages as _drop_messages

_drop_messages(*_BNB_CPU_KERNELS)  # noise at bitsandbytes' import about kernels visalign never uses (visalign._quiet)
