// src/optim.c — placeholder until implemented.
#include "common.h"
typedef int optim_placeholder_t;
