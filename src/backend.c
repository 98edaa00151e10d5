// src/backend.c — placeholder until implemented.
#include "backend.h"
typedef int backend_placeholder_t;
