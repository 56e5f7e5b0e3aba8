// weight_ram.v -- the weights, one word of P bytes (byte l: MAC lane l) per address, read one word a
// cycle (registered).  STREAMED = 1 (iCE40): the word is P/2 SB_SPRAM256KA side by side when yosys
// synthesizes (16K x 16 bits each: P = 8 fills the UP5K's four), which no bitstream initialises, so
// the weights arrive through the load port; the SPRAM has one address port, and the load and the
// reads never overlap (weights load before the first image).  STREAMED = 0 (ECP5): block RAM that
// the bitstream initialises from INIT ($readmemh); the load port still writes it.
`timescale 1ns / 1ps
module weight_ram #(parameter P = 8, parameter DEPTH = 16384, parameter AW = 14, parameter STREAMED = 0,
                    parameter INIT = "weights.hex") (
    input  wire clk,
    input  wire we,
    input  wire [AW-1:0] waddr,
    input  wire [8*P-1:0] wdata,
    input  wire [AW-1:0] raddr,
    output wire [8*P-1:0] rdata
);
    generate
        if (STREAMED) begin : spram
            wire [AW-1:0] addr = we ? waddr : raddr;
`ifdef SYNTHESIS
            genvar i;
            for (i = 0; i < P / 2; i = i + 1) begin : bank
                SB_SPRAM256KA spram (.ADDRESS(addr), .DATAIN(wdata[16*i +: 16]), .MASKWREN(4'b1111), .WREN(we),
                                     .CHIPSELECT(1'b1), .CLOCK(clk), .STANDBY(1'b0), .SLEEP(1'b0), .POWEROFF(1'b1),
                                     .DATAOUT(rdata[16*i +: 16]));
            end
`else
            reg [8*P-1:0] mem [0:DEPTH-1];
            reg [8*P-1:0] q;
            assign rdata = q;
            always @(posedge clk)
                if (we)
                    mem[addr] <= wdata;
                else
                    q <= mem[addr];
`endif
        end else begin : bram
            reg [8*P-1:0] mem [0:DEPTH-1];
            reg [8*P-1:0] q;
            assign rdata = q;
            initial $readmemh(INIT, mem);
            always @(posedge clk) begin
                if (we)
                    mem[waddr] <= wdata;
                q <= mem[raddr];
            end
        end
    endgenerate
endmodule
