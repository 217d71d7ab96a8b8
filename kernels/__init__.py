"""Optional fast paths: kernels that compute what a top-level file writes plainly, faster or in less memory.

A kernel here gives the same values and gradients as the plain code it replaces (the tests hold the two equal)
and is selected by one argument at its call site; a reader of the paper's equations never needs to open it.

    infonce.py   G3's bilinear read and G4's InfoNCE: corner-weight matmul, chunked logits recomputed in backward
                 (losses.gasp_losses(..., fast=True), the default)

Files here import only torch: never the top-level modules.
"""
