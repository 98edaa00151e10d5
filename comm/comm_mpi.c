// comm/comm_mpi.c — placeholder until implemented.
#include "common.h"
typedef int comm_mpi_placeholder_t;
