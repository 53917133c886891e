"""Unlearning of fine-tuned models: `dpbench unlearn`, its forget requests, methods and metrics.

The methods register in `dpbench.unlearning.methods` (a file each, one import there); this
package's own import stays light, so the command line loads torch only when it runs.
"""
