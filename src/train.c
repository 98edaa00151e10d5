// src/train.c — placeholder until implemented.
#include "common.h"
typedef int train_placeholder_t;
