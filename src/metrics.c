// src/metrics.c — placeholder until implemented.
#include "common.h"
typedef int metrics_placeholder_t;
