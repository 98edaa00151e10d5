// comm_nccl.cu — placeholder
