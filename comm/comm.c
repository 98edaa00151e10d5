// comm/comm.c — placeholder until implemented.
#include "common.h"
typedef int comm_placeholder_t;
