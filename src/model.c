// src/model.c — placeholder until implemented.
#include "model.h"
typedef int model_placeholder_t;
