// src/config.c — placeholder until implemented.
#include "config.h"
typedef int config_placeholder_t;
