"""Modules built on ganfast's fused ops."""
from .bias_act import BiasAct, LeakyReLU
from .blocks import Conv2dBlock, ConvTransposeBlock, LinearBlock
from .cyclegan import PatchDiscriminator, ResnetGenerator, cyclegan_init_
from .dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init_
from .fuse import BatchNorm2dParams, FusedConv2d, FusedConvTranspose2d, fuse
from .infogan import InfoGANDiscriminator, InfoGANGenerator, InfoGANOutput
from .norm import ConditionalBatchNorm2d, InstanceNormAct2d
from .spectral_norm import SpectralNorm, spectral_norm
from .sync_batchnorm import convert_sync_batchnorm
from .attention import SelfAttention2d
from .sagan import BigGANDiscriminator, BigGANGenerator, SAGANDiscriminator, SAGANGenerator

__all__ = ["BatchNorm2dParams", "BiasAct", "BigGANDiscriminator", "BigGANGenerator", "ConditionalBatchNorm2d",
           "Conv2dBlock", "ConvTransposeBlock", "DCGANDiscriminator", "DCGANGenerator", "FusedConv2d",
           "FusedConvTranspose2d", "InfoGANDiscriminator", "InfoGANGenerator", "InfoGANOutput", "InstanceNormAct2d",
           "LeakyReLU", "LinearBlock", "PatchDiscriminator", "ResnetGenerator", "SAGANDiscriminator", "SAGANGenerator",
           "SelfAttention2d", "SpectralNorm", "convert_sync_batchnorm", "cyclegan_init_", "dcgan_init_", "fuse",
           "spectral_norm"]
