// src/checkpoint.c — placeholder until implemented.
#include "checkpoint.h"
typedef int checkpoint_placeholder_t;
