/* layer-up and layer-down: the host-side mounts of a sandbox's root (see layer-ops.c). */
#ifndef CORRAL_LAYER_OPS_H
#define CORRAL_LAYER_OPS_H

/* argv[1] is "layer-up" or "layer-down"; returns the exit status. */
int layer_main(int argc, char **argv);

/* argv[1] is "layer-serve", argv[2] the root every plan's WITHIN lies under. */
int layer_serve(int argc, char **argv);

#endif
