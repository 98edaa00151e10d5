// src/data.c — placeholder until implemented.
#include "data.h"
typedef int data_placeholder_t;
