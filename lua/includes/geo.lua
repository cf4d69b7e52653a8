--[[ geo: approximate centres of countries (latitude, longitude in degrees), for impossible travel.
  Included by apply_batch.lua before rules.lua.  A country that is not listed is never "too far":
  the rule needs both ends.  Built on first use in a call (most calls never need it).
]]
local GEO
local function geo()
  if GEO then return GEO end
  GEO = {
    US = {39.8, -98.6}, CA = {56.1, -106.3}, MX = {23.6, -102.5}, BR = {-14.2, -51.9}, AR = {-38.4, -63.6},
    CL = {-35.7, -71.5}, CO = {4.6, -74.3}, PE = {-9.2, -75.0}, VE = {6.4, -66.6}, GB = {54.0, -2.0},
    IE = {53.4, -8.2}, FR = {46.2, 2.2}, DE = {51.2, 10.5}, NL = {52.1, 5.3}, BE = {50.5, 4.5},
    LU = {49.8, 6.1}, CH = {46.8, 8.2}, AT = {47.5, 14.6}, IT = {41.9, 12.6}, ES = {40.5, -3.7},
    PT = {39.4, -8.2}, DK = {56.3, 9.5}, SE = {60.1, 18.6}, NO = {60.5, 8.5}, FI = {61.9, 25.7},
    IS = {65.0, -19.0}, PL = {51.9, 19.1}, CZ = {49.8, 15.5}, SK = {48.7, 19.7}, HU = {47.2, 19.5},
    RO = {45.9, 25.0}, BG = {42.7, 25.5}, GR = {39.1, 21.8}, TR = {39.0, 35.2}, UA = {48.4, 31.2},
    RU = {61.5, 105.3}, BY = {53.7, 28.0}, LT = {55.2, 23.9}, LV = {56.9, 24.6}, EE = {58.6, 25.0},
    RS = {44.0, 21.0}, HR = {45.1, 15.2}, SI = {46.2, 14.9}, IL = {31.0, 34.9}, AE = {23.4, 53.8},
    SA = {23.9, 45.1}, QA = {25.4, 51.2}, EG = {26.8, 30.8}, MA = {31.8, -7.1}, NG = {9.1, 8.7},
    GH = {7.9, -1.0}, KE = {-0.0, 37.9}, ZA = {-30.6, 22.9}, ET = {9.1, 40.5}, IN = {20.6, 79.0},
    PK = {30.4, 69.3}, BD = {23.7, 90.4}, LK = {7.9, 80.8}, CN = {35.9, 104.2}, HK = {22.3, 114.2},
    TW = {23.7, 121.0}, JP = {36.2, 138.3}, KR = {35.9, 127.8}, SG = {1.35, 103.8}, MY = {4.2, 101.98},
    TH = {15.9, 100.99}, VN = {14.1, 108.3}, PH = {12.9, 121.8}, ID = {-0.8, 113.9}, AU = {-25.3, 133.8},
    NZ = {-40.9, 174.9},
  }
  return GEO
end

-- Great-circle distance in km between the centres of countries a and b (nil: one is not listed).
local function country_km(a, b)
  local g = geo()
  local p, q = g[a], g[b]
  if not p or not q then return nil end
  local r = math.pi / 180
  local dlat, dlon = (q[1] - p[1]) * r, (q[2] - p[2]) * r
  local h = math.sin(dlat / 2) ^ 2 + math.cos(p[1] * r) * math.cos(q[1] * r) * math.sin(dlon / 2) ^ 2
  return 2 * 6371 * math.asin(math.min(1, math.sqrt(h)))
end
