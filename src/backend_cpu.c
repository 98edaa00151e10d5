// src/backend_cpu.c — placeholder until implemented.
#include "common.h"
typedef int backend_cpu_placeholder_t;
