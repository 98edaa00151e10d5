#include "comm.h"
int main(void) { return 0; }
